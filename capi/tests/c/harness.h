/*
 * harness.h: the little the C tests share: checks that count and report,
 * a byte pattern to publish, and the proof that a fetched asset is sealed
 * and read-only.
 */
#ifndef MEMSEAL_TEST_HARNESS_H
#define MEMSEAL_TEST_HARNESS_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <memseal.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int harness_passed, harness_failed;

/* Record one check; on failure, say where and what the library said. */
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            harness_passed++;                                                   \
        } else {                                                                \
            harness_failed++;                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, " [last error: %s]\n", memseal_last_error());       \
        }                                                                       \
    } while (0)

/* A call that must return `want`. */
#define CHECK_CODE(call, want)                                                  \
    do {                                                                        \
        int code_ = (call);                                                     \
        CHECK(code_ == (want), "%s returned %d (%s), expected %d (%s)", #call,  \
              code_, memseal_strerror(code_), (want), memseal_strerror(want));  \
    } while (0)

#define CHECK_OK(call) CHECK_CODE(call, MEMSEAL_OK)

/* Print the summary line and give the exit status. */
static inline int harness_finish(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, harness_passed, harness_failed);
    return harness_failed == 0 ? 0 : 1;
}

/* Fill `buf` with a pattern that differs for each seed. */
static inline void harness_pattern(uint8_t *buf, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(i * 31u + seed * 7u + (i >> 12));
    }
}

/* True if the process dies of SIGSEGV when it writes to `p`. */
static inline int harness_write_faults(const uint8_t *p) {
    pid_t child = fork();
    if (child == 0) {
        *(volatile uint8_t *)p = (uint8_t)(*p + 1);
        _exit(0);
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child) {
        return 0;
    }
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
}

/* The permissions column of the /proc/self/maps line that holds `p`
 * ("r--p" for a read-only private mapping), or "" if none does. */
static inline const char *harness_mapping_perms(const void *p) {
    static char perms[5];
    char line[512];
    uintptr_t addr = (uintptr_t)p;
    perms[0] = '\0';
    FILE *maps = fopen("/proc/self/maps", "r");
    if (maps == NULL) {
        return perms;
    }
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long start, end;
        char found[5];
        if (sscanf(line, "%lx-%lx %4s", &start, &end, found) == 3 && addr >= start &&
            addr < end) {
            memcpy(perms, found, sizeof perms);
            break;
        }
    }
    fclose(maps);
    return perms;
}

/*
 * Check everything that makes a fetched asset trustworthy: its memfd
 * carries the seals, no write through any path succeeds, and the mapping
 * is read-only. Returns the number of failed checks.
 */
static inline int harness_check_sealed(const memseal_asset *asset) {
    int failed_before = harness_failed;
    int fd = memseal_asset_fd(asset);
    const uint8_t *data = memseal_asset_data(asset);
    size_t len = memseal_asset_len(asset);
    CHECK(fd >= 0, "asset has no descriptor");

    int seals = fcntl(fd, F_GET_SEALS);
    int need = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK;
    CHECK(seals >= 0 && (seals & need) == need, "seals are %#x, need %#x", seals, need);

    errno = 0;
    CHECK(write(fd, "x", 1) < 0, "write() to the asset's memfd succeeded");
    CHECK(ftruncate(fd, 0) < 0, "ftruncate() of the asset's memfd succeeded");
    void *writable = mmap(NULL, len ? len : 1, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(writable == MAP_FAILED, "a writable shared mapping of the memfd succeeded");
    if (writable != MAP_FAILED) {
        munmap(writable, len ? len : 1);
    }
    /* A plain user cannot even reopen it writable (mode 0444); root may,
     * since it overrides file modes, but the seals still refuse the write. */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int reopened = open(path, O_RDWR);
    if (reopened >= 0) {
        CHECK(geteuid() == 0, "a plain user reopened %s read-write", path);
        CHECK(write(reopened, "x", 1) < 0 && errno == EPERM,
              "writing through a read-write reopen of %s did not fail with EPERM", path);
        close(reopened);
    } else {
        CHECK(errno == EACCES, "reopening %s read-write: %s", path, strerror(errno));
    }

    if (len > 0) {
        const char *perms = harness_mapping_perms(data);
        CHECK(strcmp(perms, "r--p") == 0, "the asset's mapping is '%s', not r--p", perms);
        CHECK(harness_write_faults(data), "writing to the asset's bytes did not fault");
    }
    return harness_failed - failed_before;
}

#endif /* MEMSEAL_TEST_HARNESS_H */
