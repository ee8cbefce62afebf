/*
 * test_memseal.c: libmemseal against the real memseald.
 *
 * Usage: test_memseal publisher | user | daemon-down PID
 *   publisher    every function, as a user who may publish any name (root,
 *                or the daemon's own user); leaves "ctest/shared" behind
 *                for the other modes
 *   user         as a user who is not a publisher: the policy seen from
 *                there, and fetching what the publisher left
 *   daemon-down  fetch, then stop the daemon (PID) and check that the asset
 *                outlives it while every call fails cleanly
 *
 * The socket is MEMSEAL_SOCKET; the daemon keeps two versions of a name
 * (--keep-versions 2). Prints one line per failed check and a summary.
 */
#include "harness.h"

#include <poll.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>

#define SHARED_NAME "ctest/shared"
#define SHARED_LEN (1u << 20)
#define SHARED_SEED 1u

static const char *socket_path;

static memseal_client *connect_or_die(void) {
    memseal_client *client = NULL;
    int code = memseal_connect(socket_path, &client);
    if (code != MEMSEAL_OK) {
        fprintf(stderr, "cannot connect to %s: %s\n", socket_path, memseal_last_error());
        exit(2);
    }
    return client;
}

/* The bytes of an asset equal `len` bytes of pattern `seed`. */
static int holds_pattern(const memseal_asset *asset, size_t len, unsigned seed) {
    if (memseal_asset_len(asset) != len) {
        return 0;
    }
    uint8_t *want = malloc(len ? len : 1);
    harness_pattern(want, len, seed);
    int same = memcmp(memseal_asset_data(asset), want, len) == 0;
    free(want);
    return same;
}

/* Publish `len` bytes of pattern `seed`; returns the version (0 on failure). */
static uint64_t publish_pattern(memseal_client *client, const char *name, size_t len,
                                unsigned seed) {
    uint8_t *bytes = malloc(len ? len : 1);
    harness_pattern(bytes, len, seed);
    uint64_t version = 0;
    CHECK_OK(memseal_publish_bytes(client, name, bytes, len, &version));
    free(bytes);
    return version;
}

/* ------------------------------------------------------ without a daemon */

static void test_library_basics(void) {
    CHECK(strcmp(memseal_last_error(), "") == 0, "last_error before any failure is '%s'",
          memseal_last_error());
    CHECK(memseal_version()[0] != '\0', "empty version");
    int codes[] = {MEMSEAL_OK,
                   MEMSEAL_E_NOT_FOUND,
                   MEMSEAL_E_INVALID_NAME,
                   MEMSEAL_E_TOO_LARGE,
                   MEMSEAL_E_OVER_BUDGET,
                   MEMSEAL_E_PERMISSION_DENIED,
                   MEMSEAL_E_PROTOCOL,
                   MEMSEAL_E_BUSY,
                   MEMSEAL_E_INTERNAL,
                   MEMSEAL_E_UNSUPPORTED_VERSION,
                   MEMSEAL_E_INVALID_SOURCE,
                   MEMSEAL_E_UNAVAILABLE,
                   MEMSEAL_E_CONNECT,
                   MEMSEAL_E_UNTRUSTED_PEER,
                   MEMSEAL_E_VERIFY,
                   MEMSEAL_E_IO,
                   MEMSEAL_E_TIMEOUT,
                   MEMSEAL_E_CONNECTION_LOST,
                   MEMSEAL_E_BAD_ARGUMENT,
                   MEMSEAL_E_LIBRARY};
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        CHECK(i == 0 || codes[i] < 0, "code %d is not negative", codes[i]);
        CHECK(strcmp(memseal_strerror(codes[i]), "unknown error code") != 0,
              "code %d has no description", codes[i]);
        for (size_t j = 0; j < i; j++) {
            CHECK(codes[i] != codes[j], "codes %zu and %zu are both %d", i, j, codes[i]);
        }
    }
    /* The protocol's codes keep their wire order: -1 - wire value. */
    CHECK(MEMSEAL_E_NOT_FOUND == -1 && MEMSEAL_E_UNAVAILABLE == -11, "protocol codes moved");
    CHECK(strcmp(memseal_strerror(MEMSEAL_E_NOT_FOUND), "not found") == 0, "strerror(-1)");
    CHECK(strcmp(memseal_strerror(12345), "unknown error code") == 0, "strerror(12345)");

    uint8_t hash[MEMSEAL_HASH_LEN];
    memset(hash, 0xab, sizeof hash);
    char hex[2 * MEMSEAL_HASH_LEN + 1];
    CHECK_OK(memseal_hash_to_hex(hash, hex, sizeof hex));
    CHECK(strlen(hex) == 64 && strncmp(hex, "abab", 4) == 0, "hash_to_hex gave '%s'", hex);
    CHECK_CODE(memseal_hash_to_hex(hash, hex, 64), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_hash_to_hex(NULL, hex, sizeof hex), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_hash_to_hex(hash, NULL, sizeof hex), MEMSEAL_E_BAD_ARGUMENT);
}

static void test_null_arguments(void) {
    memseal_client *client = (memseal_client *)&client; /* must be reset */
    memseal_asset *asset = (memseal_asset *)&asset;
    uint8_t byte = 0;

    CHECK_CODE(memseal_connect(socket_path, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(strstr(memseal_last_error(), "out") != NULL, "message '%s' does not name the argument",
          memseal_last_error());
    CHECK_CODE(memseal_fetch(NULL, "x", &asset), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(asset == NULL, "out was not reset to NULL after a failure");
    CHECK_CODE(memseal_fetch_version(NULL, "x", 1, &asset), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_fetch_hash(NULL, "x", &byte, &asset), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_publish_bytes(NULL, "x", &byte, 1, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_publish_fd(NULL, "x", 0, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_publish_stream(NULL, "x", 0, 1, NULL), MEMSEAL_E_BAD_ARGUMENT);
    memseal_info *info = NULL;
    CHECK_CODE(memseal_stat(NULL, "x", &info), MEMSEAL_E_BAD_ARGUMENT);
    memseal_listing *list = NULL;
    CHECK_CODE(memseal_list(NULL, "", &list), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_remove(NULL, "x", 0, NULL), MEMSEAL_E_BAD_ARGUMENT);
    memseal_watcher *watcher = NULL;
    CHECK_CODE(memseal_watch(NULL, "", &watcher), MEMSEAL_E_BAD_ARGUMENT);
    memseal_event *event = NULL;
    CHECK_CODE(memseal_watch_next(NULL, 0, &event), MEMSEAL_E_BAD_ARGUMENT);
    memseal_fetch_item item = {.name = "x"};
    int code = MEMSEAL_OK;
    asset = (memseal_asset *)&asset;
    CHECK_CODE(memseal_fetch_many(NULL, &item, 1, &asset, &code, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(asset == NULL && code == MEMSEAL_E_BAD_ARGUMENT,
          "fetch_many without a client left its results unset");

    CHECK(memseal_asset_data(NULL) == NULL && memseal_asset_len(NULL) == 0 &&
              memseal_asset_version(NULL) == 0 && memseal_asset_name(NULL) == NULL &&
              memseal_asset_hash(NULL) == NULL && memseal_asset_info(NULL) == NULL &&
              memseal_asset_fd(NULL) == -1,
          "an accessor did not answer NULL with its neutral value");
    CHECK(memseal_client_socket_path(NULL) == NULL && memseal_client_server(NULL) == NULL &&
              memseal_client_session_limits(NULL) == NULL,
          "client accessors on NULL");
    CHECK(memseal_listing_len(NULL) == 0 && memseal_listing_get(NULL, 0) == NULL, "list on NULL");
    CHECK(memseal_watch_fd(NULL) == -1, "watch_fd(NULL)");
    memseal_close(NULL);
    memseal_asset_free(NULL);
    memseal_info_free(NULL);
    memseal_listing_free(NULL);
    memseal_event_free(NULL);
    memseal_watch_close(NULL);

    /* With a live client, NULL strings and buffers are refused too. */
    CHECK_OK(memseal_connect(socket_path, &client));
    CHECK_CODE(memseal_fetch(client, NULL, &asset), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_fetch(client, "x", NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_fetch_hash(client, "x", NULL, &asset), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_publish_bytes(client, NULL, &byte, 1, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_publish_bytes(client, "ctest/null", NULL, 5, NULL),
               MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_publish_fd(client, "ctest/badfd", -1, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_list(client, NULL, &list), MEMSEAL_E_BAD_ARGUMENT);
    CHECK_CODE(memseal_watch(client, NULL, &watcher), MEMSEAL_E_BAD_ARGUMENT);
    /* None of that cost the connection. */
    CHECK_CODE(memseal_fetch(client, "ctest/never-published", &asset), MEMSEAL_E_NOT_FOUND);
    memseal_close(client);
}

static void test_no_daemon(void) {
    memseal_client *client = (memseal_client *)&client;
    const char *nowhere = "/nonexistent-memseal-dir/memseald.sock";
    CHECK_CODE(memseal_connect(nowhere, &client), MEMSEAL_E_CONNECT);
    CHECK(client == NULL, "client not NULL after a failed connect");
    CHECK(strstr(memseal_last_error(), nowhere) != NULL, "message '%s' does not name the socket",
          memseal_last_error());
}

/* --------------------------------------------------------- with a daemon */

static void test_connect(void) {
    memseal_client *client = NULL;
    CHECK_OK(memseal_connect(socket_path, &client));
    CHECK(client != NULL, "no client");
    CHECK(strcmp(memseal_client_socket_path(client), socket_path) == 0, "socket path '%s'",
          memseal_client_socket_path(client));
    CHECK(strncmp(memseal_client_server(client), "memseald", 8) == 0, "server '%s'",
          memseal_client_server(client));
    memseal_close(client);

    /* NULL: the default socket, which MEMSEAL_SOCKET names here. */
    client = NULL;
    CHECK_OK(memseal_connect(NULL, &client));
    CHECK(client != NULL && strcmp(memseal_client_socket_path(client), socket_path) == 0,
          "connect(NULL) did not reach MEMSEAL_SOCKET");
    memseal_close(client);

    client = NULL;
    CHECK_OK(memseal_connect_ex(socket_path, "c-test", 5000, -1, &client));
    memseal_close(client);
    /* The daemon runs as this user (publisher mode) or as root (user mode). */
    uid_t daemon_uid = geteuid();
    const char *daemon_uid_env = getenv("MEMSEAL_TEST_DAEMON_UID");
    if (daemon_uid_env != NULL) {
        daemon_uid = (uid_t)strtoul(daemon_uid_env, NULL, 10);
    }
    client = NULL;
    CHECK_OK(memseal_connect_ex(socket_path, NULL, -1, daemon_uid, &client));
    memseal_close(client);
    client = (memseal_client *)&client;
    CHECK_CODE(memseal_connect_ex(socket_path, NULL, 0, (int64_t)daemon_uid + 4242, &client),
               MEMSEAL_E_UNTRUSTED_PEER);
    CHECK(client == NULL, "client not NULL after an untrusted peer");
    CHECK_CODE(memseal_connect_ex(socket_path, NULL, 0, 1ll << 40, &client),
               MEMSEAL_E_BAD_ARGUMENT);
}

static void test_round_trip(memseal_client *client) {
    const size_t len = 3 * 1024 * 1024 + 17;
    uint64_t v1 = publish_pattern(client, "ctest/round", len, 2);
    uint64_t v2 = publish_pattern(client, "ctest/round", len / 2, 3);
    CHECK(v1 >= 1 && v2 == v1 + 1, "versions %llu then %llu", (unsigned long long)v1,
          (unsigned long long)v2);

    memseal_asset *latest = NULL;
    CHECK_OK(memseal_fetch(client, "ctest/round", &latest));
    CHECK(latest != NULL && holds_pattern(latest, len / 2, 3), "latest bytes differ");
    CHECK(memseal_asset_version(latest) == v2, "latest is version %llu",
          (unsigned long long)memseal_asset_version(latest));
    CHECK(strcmp(memseal_asset_name(latest), "ctest/round") == 0, "name '%s'",
          memseal_asset_name(latest));
    const memseal_info *info = memseal_asset_info(latest);
    CHECK(info->size == len / 2 && info->version == v2 && info->publisher_uid == geteuid() &&
              info->published_ms > 0 && strcmp(info->name, "ctest/round") == 0,
          "asset info does not describe what was published");
    CHECK(memcmp(memseal_asset_hash(latest), info->hash, MEMSEAL_HASH_LEN) == 0, "hash accessor");

    memseal_asset *old = NULL;
    CHECK_OK(memseal_fetch_version(client, "ctest/round", v1, &old));
    CHECK(old != NULL && holds_pattern(old, len, 2), "version %llu bytes differ",
          (unsigned long long)v1);

    memseal_info *stat = NULL;
    CHECK_OK(memseal_stat(client, "ctest/round", &stat));
    CHECK(stat != NULL && stat->version == v2 && stat->size == len / 2 &&
              memcmp(stat->hash, info->hash, MEMSEAL_HASH_LEN) == 0,
          "stat disagrees with the fetch");
    memseal_info_free(stat);

    memseal_asset *by_hash = NULL;
    CHECK_OK(memseal_fetch_hash(client, "ctest/round", memseal_asset_hash(old), &by_hash));
    CHECK(memseal_asset_version(by_hash) == v1, "fetch by hash found version %llu",
          (unsigned long long)memseal_asset_version(by_hash));
    memseal_asset_free(by_hash);

    uint8_t zero[MEMSEAL_HASH_LEN] = {0};
    memseal_asset *none = (memseal_asset *)&none;
    CHECK_CODE(memseal_fetch_hash(client, "ctest/round", zero, &none), MEMSEAL_E_NOT_FOUND);
    CHECK(none == NULL, "out not NULL after not found");
    CHECK_CODE(memseal_fetch_version(client, "ctest/round", v2 + 100, &none),
               MEMSEAL_E_NOT_FOUND);

    /* Both mappings are independent and sealed. */
    CHECK(harness_check_sealed(latest) == 0, "latest version not sealed read-only");
    CHECK(harness_check_sealed(old) == 0, "old version not sealed read-only");
    memseal_asset_free(latest);
    memseal_asset_free(old);

    /* An empty asset: a valid pointer, no bytes. */
    CHECK(publish_pattern(client, "ctest/empty", 0, 0) >= 1, "empty publish");
    CHECK_OK(memseal_publish_bytes(client, "ctest/empty", NULL, 0, NULL));
    memseal_asset *empty = NULL;
    CHECK_OK(memseal_fetch(client, "ctest/empty", &empty));
    CHECK(memseal_asset_len(empty) == 0 && memseal_asset_data(empty) != NULL,
          "empty asset: len %zu data %p", memseal_asset_len(empty),
          (const void *)memseal_asset_data(empty));
    CHECK(harness_check_sealed(empty) == 0, "empty asset not sealed");
    memseal_asset_free(empty);
}

static void test_refusals(memseal_client *client) {
    memseal_asset *asset = (memseal_asset *)&asset;
    CHECK_CODE(memseal_fetch(client, "ctest/missing", &asset), MEMSEAL_E_NOT_FOUND);
    CHECK(asset == NULL, "out not NULL after not found");
    CHECK(strstr(memseal_last_error(), "ctest/missing") != NULL ||
              strstr(memseal_last_error(), "not found") != NULL,
          "message '%s' says nothing about what was missing", memseal_last_error());

    const char *invalid[] = {"../etc/passwd", "", "a//b", "/abs", "a/./b", "sp ace", "\xff\xfe"};
    uint8_t byte = 1;
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        CHECK_CODE(memseal_fetch(client, invalid[i], &asset), MEMSEAL_E_INVALID_NAME);
        CHECK_CODE(memseal_publish_bytes(client, invalid[i], &byte, 1, NULL),
                   MEMSEAL_E_INVALID_NAME);
    }
    memseal_info *info = NULL;
    CHECK_CODE(memseal_stat(client, "ctest/missing", &info), MEMSEAL_E_NOT_FOUND);
    CHECK_CODE(memseal_remove(client, "ctest/missing", 0, NULL), MEMSEAL_E_NOT_FOUND);
    /* Refusals leave the client usable. */
    CHECK(publish_pattern(client, "ctest/after-refusals", 10, 4) >= 1, "client unusable");
}

static void test_outlives_client(void) {
    memseal_client *client = connect_or_die();
    CHECK(publish_pattern(client, "ctest/outlive", 100000, 5) >= 1, "publish");
    memseal_asset *asset = NULL;
    CHECK_OK(memseal_fetch(client, "ctest/outlive", &asset));
    memseal_close(client);
    CHECK(holds_pattern(asset, 100000, 5), "bytes changed after memseal_close");

    /* Removed from the daemon: this process keeps its bytes. */
    client = connect_or_die();
    uint64_t removed = 0;
    CHECK_OK(memseal_remove(client, "ctest/outlive", 0, &removed));
    CHECK(removed == 1, "removed %llu versions", (unsigned long long)removed);
    memseal_close(client);
    CHECK(holds_pattern(asset, 100000, 5), "bytes changed after the name was removed");
    CHECK(harness_check_sealed(asset) == 0, "not sealed after the client closed");
    memseal_asset_free(asset);
}

static void test_publish_descriptors(memseal_client *client) {
    /* A regular file: the daemon copies it. */
    char path[] = "/tmp/memseal-c-test-XXXXXX";
    int file = mkstemp(path);
    CHECK(file >= 0, "mkstemp: %s", strerror(errno));
    unlink(path);
    uint8_t buf[70000];
    harness_pattern(buf, sizeof buf, 6);
    CHECK(write(file, buf, sizeof buf) == (ssize_t)sizeof buf, "write temp file");
    uint64_t version = 0;
    CHECK_OK(memseal_publish_fd(client, "ctest/from-file", file, &version));
    CHECK(version >= 1, "version %llu", (unsigned long long)version);
    CHECK(fcntl(file, F_GETFD) >= 0, "the caller's descriptor was closed");
    close(file);
    memseal_asset *asset = NULL;
    CHECK_OK(memseal_fetch(client, "ctest/from-file", &asset));
    CHECK(holds_pattern(asset, sizeof buf, 6), "file asset bytes differ");
    memseal_asset_free(asset);

    /* A memfd sealed by the caller: adopted as it is. */
    int memfd = (int)syscall(SYS_memfd_create, "c-test", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    CHECK(memfd >= 0, "memfd_create: %s", strerror(errno));
    harness_pattern(buf, sizeof buf, 7);
    CHECK(write(memfd, buf, sizeof buf) == (ssize_t)sizeof buf, "write memfd");
    CHECK(fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK) == 0, "seal");
    CHECK_OK(memseal_publish_fd(client, "ctest/from-memfd", memfd, NULL));
    close(memfd);
    asset = NULL;
    CHECK_OK(memseal_fetch(client, "ctest/from-memfd", &asset));
    CHECK(holds_pattern(asset, sizeof buf, 7), "memfd asset bytes differ");
    CHECK(harness_check_sealed(asset) == 0, "adopted memfd not sealed read-only");
    memseal_asset_free(asset);

    /* A pipe cannot go by descriptor, but streams. */
    int pipe_fds[2];
    CHECK(pipe(pipe_fds) == 0, "pipe");
    CHECK_CODE(memseal_publish_fd(client, "ctest/from-pipe", pipe_fds[0], NULL),
               MEMSEAL_E_BAD_ARGUMENT);
    harness_pattern(buf, 5000, 8);
    CHECK(write(pipe_fds[1], buf, 5000) == 5000, "write pipe");
    CHECK_OK(memseal_publish_stream(client, "ctest/from-pipe", pipe_fds[0], 5000, &version));
    asset = NULL;
    CHECK_OK(memseal_fetch(client, "ctest/from-pipe", &asset));
    CHECK(holds_pattern(asset, 5000, 8), "streamed asset bytes differ");
    memseal_asset_free(asset);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

static void test_stream_ends_early(void) {
    memseal_client *client = connect_or_die();
    int pipe_fds[2];
    CHECK(pipe(pipe_fds) == 0, "pipe");
    CHECK(write(pipe_fds[1], "short", 5) == 5, "write pipe");
    close(pipe_fds[1]);
    int code = memseal_publish_stream(client, "ctest/short", pipe_fds[0], 100, NULL);
    CHECK(code < 0, "a stream that ended early was published");
    close(pipe_fds[0]);
    memseal_asset *asset = NULL;
    CHECK_CODE(memseal_fetch(client, SHARED_NAME, &asset), MEMSEAL_E_CONNECTION_LOST);
    memseal_close(client);
    client = connect_or_die();
    CHECK_CODE(memseal_fetch(client, "ctest/short", &asset), MEMSEAL_E_NOT_FOUND);
    memseal_close(client);
}

static void test_catalog(memseal_client *client) {
    publish_pattern(client, "ctest/list/b", 3, 9);
    publish_pattern(client, "ctest/list/a", 2, 9);
    uint64_t c1 = publish_pattern(client, "ctest/list/c", 1, 9);
    uint64_t c2 = publish_pattern(client, "ctest/list/c", 4, 10);
    memseal_listing *list = NULL;
    CHECK_OK(memseal_list(client, "ctest/list/", &list));
    CHECK(memseal_listing_len(list) == 3, "listed %zu names", memseal_listing_len(list));
    const char *want[] = {"ctest/list/a", "ctest/list/b", "ctest/list/c"};
    for (size_t i = 0; i < 3 && i < memseal_listing_len(list); i++) {
        const memseal_info *info = memseal_listing_get(list, i);
        CHECK(info != NULL && strcmp(info->name, want[i]) == 0, "entry %zu is '%s'", i,
              info ? info->name : "(null)");
    }
    const memseal_info *c = memseal_listing_get(list, 2);
    CHECK(c != NULL && c->version == c2 && c->size == 4, "the list shows an old version of c");
    CHECK(memseal_listing_get(list, 3) == NULL, "entry past the end");
    memseal_listing_free(list);

    list = NULL;
    CHECK_OK(memseal_list(client, "ctest/list/none-here/", &list));
    CHECK(list != NULL && memseal_listing_len(list) == 0, "empty listing");
    memseal_listing_free(list);

    uint64_t removed = 0;
    CHECK_OK(memseal_remove(client, "ctest/list/c", c1, &removed));
    CHECK(removed == 1, "removed %llu", (unsigned long long)removed);
    memseal_asset *asset = NULL;
    CHECK_CODE(memseal_fetch_version(client, "ctest/list/c", c1, &asset), MEMSEAL_E_NOT_FOUND);
    CHECK_OK(memseal_fetch(client, "ctest/list/c", &asset));
    CHECK(memseal_asset_version(asset) == c2, "the remaining version is not the newer one");
    memseal_asset_free(asset);
    CHECK_OK(memseal_remove(client, "ctest/list/c", 0, NULL));
    CHECK_CODE(memseal_stat(client, "ctest/list/c", &(memseal_info *){NULL}),
               MEMSEAL_E_NOT_FOUND);
}

static void test_watch(memseal_client *client) {
    memseal_watcher *watcher = NULL;
    CHECK_OK(memseal_watch(client, "ctest/watched/", &watcher));
    CHECK(memseal_watch_fd(watcher) >= 0, "watch fd");
    memseal_event *event = (memseal_event *)&event;
    CHECK_OK(memseal_watch_next(watcher, 0, &event));
    CHECK(event == NULL, "an event before anything changed");

    /* The client that opened the watch stays usable for requests. */
    uint64_t version = publish_pattern(client, "ctest/watched/x", 8, 11);
    publish_pattern(client, "ctest/unwatched", 8, 11);
    struct pollfd pfd = {.fd = memseal_watch_fd(watcher), .events = POLLIN};
    CHECK(poll(&pfd, 1, 10000) == 1, "the watch fd did not become readable");
    CHECK_OK(memseal_watch_next(watcher, 10000, &event));
    CHECK(event != NULL && event->kind == MEMSEAL_EVENT_PUBLISHED &&
              strcmp(event->info.name, "ctest/watched/x") == 0 && event->info.version == version,
          "expected the publish of ctest/watched/x");
    memseal_event_free(event);

    CHECK_OK(memseal_remove(client, "ctest/watched/x", 0, NULL));
    event = NULL;
    CHECK_OK(memseal_watch_next(watcher, 10000, &event));
    CHECK(event != NULL && event->kind == MEMSEAL_EVENT_REMOVED &&
              strcmp(event->info.name, "ctest/watched/x") == 0,
          "expected the removal of ctest/watched/x");
    memseal_event_free(event);
    CHECK_OK(memseal_watch_next(watcher, 50, &event));
    CHECK(event == NULL, "an event for an unwatched name");
    memseal_watch_close(watcher);
}

/* ------------------------------------------------------------ fetch many */

#define MANY 64
#define MANY_SEED 100u

static char many_names[MANY][32];

/* The size of batch asset `i`: from empty to about 256 KiB. */
static size_t many_len(size_t i) { return i * 4099; }

/* Publish the MANY assets the batch tests fetch. */
static void publish_many(memseal_client *client) {
    for (size_t i = 0; i < MANY; i++) {
        snprintf(many_names[i], sizeof many_names[i], "ctest/many/%02zu", i);
        CHECK(publish_pattern(client, many_names[i], many_len(i), MANY_SEED + (unsigned)i) >= 1,
              "publish %s", many_names[i]);
    }
}

/* The arrays of one batch of `count` items, freed by free_batch. */
struct batch {
    size_t count;
    memseal_fetch_item *items;
    memseal_asset **assets;
    int *codes;
    const char **messages;
};

static struct batch new_batch(size_t count) {
    struct batch b = {
        .count = count,
        .items = calloc(count, sizeof *b.items),
        .assets = calloc(count, sizeof *b.assets),
        .codes = calloc(count, sizeof *b.codes),
        .messages = calloc(count, sizeof *b.messages),
    };
    if (!b.items || !b.assets || !b.codes || !b.messages) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return b;
}

static int fetch_batch(memseal_client *client, struct batch *b) {
    return memseal_fetch_many(client, b->items, b->count, b->assets, b->codes, b->messages);
}

/* Free every asset the batch holds, and its arrays. */
static void free_batch(struct batch *b) {
    for (size_t i = 0; i < b->count; i++) {
        memseal_asset_free(b->assets[i]);
    }
    free(b->items);
    free(b->assets);
    free(b->codes);
    free(b->messages);
}

/* Item `i` of a batch was fetched and is batch asset `which`. */
static void check_many_item(const struct batch *b, size_t i, size_t which) {
    CHECK(b->codes[i] == MEMSEAL_OK && b->assets[i] != NULL && b->messages[i] == NULL,
          "item %zu: code %d (%s), message '%s'", i, b->codes[i], memseal_strerror(b->codes[i]),
          b->messages[i] ? b->messages[i] : "(none)");
    if (b->assets[i] != NULL) {
        CHECK(strcmp(memseal_asset_name(b->assets[i]), many_names[which]) == 0,
              "item %zu is '%s'", i, memseal_asset_name(b->assets[i]));
        CHECK(holds_pattern(b->assets[i], many_len(which), MANY_SEED + (unsigned)which),
              "item %zu: the bytes of %s differ", i, many_names[which]);
    }
}

static void test_session_limits(memseal_client *client) {
    const memseal_session_limits *limits = memseal_client_session_limits(client);
    CHECK(limits != NULL, "memseald announced no session limits");
    if (limits != NULL) {
        CHECK(limits->max_fetch_many >= 1 &&
                  limits->max_fetch_many <= limits->max_unread_descriptors,
              "max_fetch_many %u, max_unread_descriptors %u", limits->max_fetch_many,
              limits->max_unread_descriptors);
        CHECK(memseal_client_session_limits(client) == limits, "the limits moved");
    }
}

/* MANY assets in one call: each identical to what a single fetch gives. */
static void test_fetch_many_all(memseal_client *client) {
    struct batch b = new_batch(MANY);
    for (size_t i = 0; i < MANY; i++) {
        b.items[i].name = many_names[i];
    }
    CHECK_OK(fetch_batch(client, &b));
    for (size_t i = 0; i < MANY; i++) {
        check_many_item(&b, i, i);
        memseal_asset *single = NULL;
        CHECK_OK(memseal_fetch(client, many_names[i], &single));
        if (b.assets[i] == NULL || single == NULL) {
            memseal_asset_free(single);
            continue;
        }
        const memseal_info *batched = memseal_asset_info(b.assets[i]);
        const memseal_info *alone = memseal_asset_info(single);
        CHECK(batched->version == alone->version && batched->size == alone->size &&
                  batched->published_ms == alone->published_ms &&
                  batched->publisher_uid == alone->publisher_uid &&
                  memcmp(batched->hash, alone->hash, MEMSEAL_HASH_LEN) == 0,
              "item %zu: the batch and a single fetch describe %s differently", i, many_names[i]);
        CHECK(memseal_asset_len(b.assets[i]) == memseal_asset_len(single) &&
                  memcmp(memseal_asset_data(b.assets[i]), memseal_asset_data(single),
                         memseal_asset_len(single)) == 0,
              "item %zu: the batch and a single fetch hold different bytes", i);
        CHECK(harness_check_sealed(b.assets[i]) == 0, "item %zu is not sealed read-only", i);
        memseal_asset_free(single);
    }
    free_batch(&b);
}

/* Items that fail, each alone, among items that succeed. */
static void test_fetch_many_failures(memseal_client *client) {
    /* The thread's last error, which per-item failures must leave alone. */
    memseal_asset *none = NULL;
    CHECK_CODE(memseal_fetch(client, "ctest/many-marker", &none), MEMSEAL_E_NOT_FOUND);
    char before[512];
    snprintf(before, sizeof before, "%s", memseal_last_error());

    uint8_t unknown_hash[MEMSEAL_HASH_LEN];
    memset(unknown_hash, 0x5a, sizeof unknown_hash);
    struct batch b = new_batch(8);
    b.items[0] = (memseal_fetch_item){.name = many_names[3]};
    b.items[1] = (memseal_fetch_item){.name = "ctest/many-missing"};
    b.items[2] = (memseal_fetch_item){.name = many_names[4], .version = 1000};
    b.items[3] = (memseal_fetch_item){.name = many_names[5], .hash = unknown_hash};
    b.items[4] = (memseal_fetch_item){.name = "a//b"};
    b.items[5] = (memseal_fetch_item){.name = "\xff\xfe"};
    b.items[6] = (memseal_fetch_item){.name = many_names[6]};
    b.items[7] = (memseal_fetch_item){.name = many_names[3]}; /* twice in one batch */
    CHECK_OK(fetch_batch(client, &b));
    check_many_item(&b, 0, 3);
    check_many_item(&b, 6, 6);
    check_many_item(&b, 7, 3);
    CHECK(b.assets[0] != b.assets[7], "one asset handle given out for two items");
    const int want[] = {MEMSEAL_E_NOT_FOUND, MEMSEAL_E_NOT_FOUND, MEMSEAL_E_NOT_FOUND,
                        MEMSEAL_E_INVALID_NAME, MEMSEAL_E_INVALID_NAME};
    for (size_t i = 1; i <= 5; i++) {
        CHECK(b.codes[i] == want[i - 1], "item %zu: code %d (%s), expected %d (%s)", i,
              b.codes[i], memseal_strerror(b.codes[i]), want[i - 1],
              memseal_strerror(want[i - 1]));
        CHECK(b.assets[i] == NULL, "item %zu failed but has an asset", i);
        CHECK(b.messages[i] != NULL && b.messages[i][0] != '\0', "item %zu failed without words",
              i);
    }
    CHECK(b.messages[1] != NULL && strstr(b.messages[1], "ctest/many-missing") != NULL,
          "the message '%s' does not name the missing asset", b.messages[1]);
    CHECK(b.messages[5] != NULL && strstr(b.messages[5], "items[5].name") != NULL,
          "the message '%s' does not name the item that is not UTF-8", b.messages[5]);
    CHECK(strcmp(memseal_last_error(), before) == 0,
          "failed items replaced the thread's last error with '%s'", memseal_last_error());

    /* The messages outlive other calls, up to the next batch. */
    memseal_asset *single = NULL;
    CHECK_CODE(memseal_fetch(client, "ctest/many-missing-too", &single), MEMSEAL_E_NOT_FOUND);
    CHECK(strstr(b.messages[1], "ctest/many-missing") != NULL, "the message changed");

    /* Without messages_out, the same codes. */
    for (size_t i = 0; i < b.count; i++) {
        memseal_asset_free(b.assets[i]);
    }
    CHECK_OK(memseal_fetch_many(client, b.items, b.count, b.assets, b.codes, NULL));
    CHECK(b.codes[0] == MEMSEAL_OK && b.codes[1] == MEMSEAL_E_NOT_FOUND &&
              b.codes[5] == MEMSEAL_E_INVALID_NAME && b.codes[6] == MEMSEAL_OK,
          "the codes differ without messages_out");
    free_batch(&b);

    /* Only failures: still a successful call. */
    b = new_batch(2);
    b.items[0].name = "ctest/many-missing";
    b.items[1].name = "\xff";
    CHECK_OK(fetch_batch(client, &b));
    CHECK(b.codes[0] == MEMSEAL_E_NOT_FOUND && b.codes[1] == MEMSEAL_E_INVALID_NAME &&
              b.assets[0] == NULL && b.assets[1] == NULL,
          "a batch of failures: codes %d and %d", b.codes[0], b.codes[1]);
    free_batch(&b);
}

/* Versions and hashes select exactly what a single fetch would. */
static void test_fetch_many_selectors(memseal_client *client) {
    const char *name = "ctest/many-versions";
    uint64_t v1 = publish_pattern(client, name, 5000, 201);
    uint64_t v2 = publish_pattern(client, name, 7000, 202);
    memseal_asset *first = NULL, *second = NULL;
    CHECK_OK(memseal_fetch_version(client, name, v1, &first));
    CHECK_OK(memseal_fetch_version(client, name, v2, &second));
    if (first == NULL || second == NULL) {
        memseal_asset_free(first);
        memseal_asset_free(second);
        return;
    }
    struct batch b = new_batch(6);
    b.items[0] = (memseal_fetch_item){.name = name, .version = v1};
    b.items[1] = (memseal_fetch_item){.name = name, .hash = memseal_asset_hash(first)};
    b.items[2] = (memseal_fetch_item){.name = name};
    b.items[3] = (memseal_fetch_item){.name = name, .version = v2};
    b.items[4] = (memseal_fetch_item){.name = name, .hash = memseal_asset_hash(second)};
    b.items[5] = (memseal_fetch_item){.name = name, .version = v2 + 1};
    CHECK_OK(fetch_batch(client, &b));
    const uint64_t want_version[] = {v1, v1, v2, v2, v2};
    for (size_t i = 0; i < 5; i++) {
        CHECK(b.codes[i] == MEMSEAL_OK && b.assets[i] != NULL, "item %zu: code %d (%s)", i,
              b.codes[i], memseal_strerror(b.codes[i]));
        if (b.assets[i] == NULL) {
            continue;
        }
        CHECK(memseal_asset_version(b.assets[i]) == want_version[i],
              "item %zu is version %llu, expected %llu", i,
              (unsigned long long)memseal_asset_version(b.assets[i]),
              (unsigned long long)want_version[i]);
        int old = want_version[i] == v1;
        CHECK(holds_pattern(b.assets[i], old ? 5000 : 7000, old ? 201 : 202),
              "item %zu: the bytes differ", i);
    }
    CHECK(b.codes[5] == MEMSEAL_E_NOT_FOUND, "a version not yet published: code %d", b.codes[5]);
    free_batch(&b);

    /* A version and a hash at once: refused before anything is sent. */
    b = new_batch(2);
    b.items[0] = (memseal_fetch_item){.name = name};
    b.items[1] =
        (memseal_fetch_item){.name = name, .version = v1, .hash = memseal_asset_hash(first)};
    CHECK_CODE(fetch_batch(client, &b), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(strstr(memseal_last_error(), "items[1]") != NULL,
          "the refusal '%s' does not name the item", memseal_last_error());
    CHECK(b.assets[0] == NULL && b.assets[1] == NULL && b.codes[0] == MEMSEAL_E_BAD_ARGUMENT &&
              b.codes[1] == MEMSEAL_E_BAD_ARGUMENT,
          "a refused call left results behind");
    free_batch(&b);
    memseal_asset_free(first);
    memseal_asset_free(second);
}

/* More items than one request may name: the library splits them. */
static void test_fetch_many_split(memseal_client *client) {
    const memseal_session_limits *limits = memseal_client_session_limits(client);
    size_t per_request = limits ? limits->max_fetch_many : 1;
    struct batch b = new_batch(2 * per_request + 3);
    for (size_t i = 0; i < b.count; i++) {
        /* Every name, some of them several times, one missing. */
        b.items[i].name = i == per_request ? "ctest/many-missing" : many_names[(i * 7) % MANY];
    }
    CHECK_OK(fetch_batch(client, &b));
    for (size_t i = 0; i < b.count; i++) {
        if (i == per_request) {
            CHECK(b.codes[i] == MEMSEAL_E_NOT_FOUND && b.assets[i] == NULL,
                  "item %zu (missing): code %d", i, b.codes[i]);
        } else {
            check_many_item(&b, i, (i * 7) % MANY);
        }
    }
    free_batch(&b);
}

/* Refused arguments: the documented code, results reset, nothing sent. */
static void test_fetch_many_arguments(memseal_client *client) {
    memseal_fetch_item items[2] = {{.name = many_names[1]}, {.name = many_names[2]}};
    memseal_asset *assets[2] = {(memseal_asset *)&items, (memseal_asset *)&items};
    int codes[2] = {12345, 12345};
    const char *messages[2] = {"stale", "stale"};

    CHECK_CODE(memseal_fetch_many(client, NULL, 2, assets, codes, messages),
               MEMSEAL_E_BAD_ARGUMENT);
    CHECK(assets[0] == NULL && assets[1] == NULL && codes[0] == MEMSEAL_E_BAD_ARGUMENT &&
              codes[1] == MEMSEAL_E_BAD_ARGUMENT && messages[0] == NULL && messages[1] == NULL,
          "NULL items: the results were not reset");
    CHECK(strstr(memseal_last_error(), "items") != NULL, "message '%s'", memseal_last_error());

    codes[0] = codes[1] = 12345;
    CHECK_CODE(memseal_fetch_many(client, items, 2, NULL, codes, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(codes[0] == MEMSEAL_E_BAD_ARGUMENT && codes[1] == MEMSEAL_E_BAD_ARGUMENT,
          "NULL assets_out: codes %d, %d", codes[0], codes[1]);
    CHECK(strstr(memseal_last_error(), "assets_out") != NULL, "message '%s'",
          memseal_last_error());

    assets[0] = assets[1] = (memseal_asset *)&items;
    CHECK_CODE(memseal_fetch_many(client, items, 2, assets, NULL, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(assets[0] == NULL && assets[1] == NULL, "NULL codes_out: the assets were not reset");
    CHECK(strstr(memseal_last_error(), "codes_out") != NULL, "message '%s'",
          memseal_last_error());

    assets[0] = (memseal_asset *)&items;
    codes[0] = 12345;
    CHECK_CODE(memseal_fetch_many(client, items, 0, assets, codes, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(assets[0] == (memseal_asset *)&items && codes[0] == 12345,
          "a count of 0 wrote results");
    CHECK(strstr(memseal_last_error(), "count") != NULL, "message '%s'", memseal_last_error());
    CHECK_CODE(memseal_fetch_many(client, NULL, 0, NULL, NULL, NULL), MEMSEAL_E_BAD_ARGUMENT);

    items[1].name = NULL;
    CHECK_CODE(memseal_fetch_many(client, items, 2, assets, codes, NULL), MEMSEAL_E_BAD_ARGUMENT);
    CHECK(strstr(memseal_last_error(), "items[1].name") != NULL, "message '%s'",
          memseal_last_error());
    CHECK(assets[0] == NULL && codes[0] == MEMSEAL_E_BAD_ARGUMENT,
          "a NULL name: item 0 was fetched all the same");

    /* None of that was sent, or cost the connection. */
    items[1].name = many_names[2];
    CHECK_OK(memseal_fetch_many(client, items, 2, assets, codes, NULL));
    CHECK(codes[0] == MEMSEAL_OK && codes[1] == MEMSEAL_OK, "after the refusals: codes %d, %d",
          codes[0], codes[1]);
    memseal_asset_free(assets[0]);
    memseal_asset_free(assets[1]);
}

static void test_fetch_many(memseal_client *client) {
    test_session_limits(client);
    publish_many(client);
    test_fetch_many_all(client);
    test_fetch_many_failures(client);
    test_fetch_many_selectors(client);
    test_fetch_many_split(client);
    test_fetch_many_arguments(client);
}

/* Threads: each has its own last error, and one client serves all. */
struct worker {
    memseal_client *client;
    int fetched;
    int batches;
    int own_error_kept;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    memseal_asset *asset = NULL;
    memseal_fetch(w->client, "ctest/threads/missing", &asset);
    for (int i = 0; i < 20; i++) {
        if (memseal_fetch(w->client, SHARED_NAME, &asset) == MEMSEAL_OK &&
            holds_pattern(asset, SHARED_LEN, SHARED_SEED)) {
            w->fetched++;
        }
        memseal_asset_free(asset);
        asset = NULL;
    }
    w->own_error_kept = strstr(memseal_last_error(), "threads/missing") != NULL ||
                        strstr(memseal_last_error(), "not found") != NULL;
    /* Batches take turns with the other threads' calls; each thread keeps
     * its own item messages. */
    memseal_fetch_item items[2] = {{.name = SHARED_NAME}, {.name = "ctest/threads/missing"}};
    for (int i = 0; i < 5; i++) {
        memseal_asset *assets[2];
        int codes[2];
        const char *messages[2];
        if (memseal_fetch_many(w->client, items, 2, assets, codes, messages) == MEMSEAL_OK &&
            codes[0] == MEMSEAL_OK && holds_pattern(assets[0], SHARED_LEN, SHARED_SEED) &&
            codes[1] == MEMSEAL_E_NOT_FOUND && messages[0] == NULL &&
            strstr(messages[1], "threads/missing") != NULL) {
            w->batches++;
        }
        memseal_asset_free(assets[0]);
        memseal_asset_free(assets[1]);
    }
    return NULL;
}

static void test_threads(memseal_client *client) {
    memseal_asset *asset = NULL;
    CHECK_CODE(memseal_fetch(client, "bad//name", &asset), MEMSEAL_E_INVALID_NAME);
    char mine[256];
    snprintf(mine, sizeof mine, "%s", memseal_last_error());

    struct worker workers[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        workers[i] = (struct worker){.client = client};
        CHECK(pthread_create(&threads[i], NULL, worker_main, &workers[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        CHECK(workers[i].fetched == 20, "thread %d fetched %d of 20", i, workers[i].fetched);
        CHECK(workers[i].own_error_kept, "thread %d lost its own last error", i);
        CHECK(workers[i].batches == 5, "thread %d fetched %d of 5 batches", i,
              workers[i].batches);
    }
    CHECK(strcmp(memseal_last_error(), mine) == 0,
          "another thread's failure replaced this thread's last error");
}

static void run_publisher(void) {
    test_null_arguments();
    test_connect();
    memseal_client *client = connect_or_die();
    CHECK(publish_pattern(client, SHARED_NAME, SHARED_LEN, SHARED_SEED) >= 1, "shared publish");
    test_round_trip(client);
    test_refusals(client);
    test_outlives_client();
    test_publish_descriptors(client);
    test_stream_ends_early();
    test_catalog(client);
    test_watch(client);
    test_fetch_many(client);
    test_threads(client);
    memseal_close(client);
}

/* ----------------------------------------------- as a plain user */

static void run_user(void) {
    test_connect();
    memseal_client *client = connect_or_die();
    memseal_asset *shared = NULL;
    CHECK_OK(memseal_fetch(client, SHARED_NAME, &shared));
    CHECK(shared != NULL && holds_pattern(shared, SHARED_LEN, SHARED_SEED),
          "the publisher's asset differs");
    CHECK(harness_check_sealed(shared) == 0, "not sealed read-only for a plain user");
    memseal_asset_free(shared);

    memseal_fetch_item items[2] = {{.name = "ctest/never-published"}, {.name = SHARED_NAME}};
    memseal_asset *assets[2];
    int codes[2];
    CHECK_OK(memseal_fetch_many(client, items, 2, assets, codes, NULL));
    CHECK(codes[0] == MEMSEAL_E_NOT_FOUND && assets[0] == NULL && codes[1] == MEMSEAL_OK &&
              holds_pattern(assets[1], SHARED_LEN, SHARED_SEED),
          "a batch as a plain user: codes %d, %d", codes[0], codes[1]);
    CHECK(assets[1] == NULL || harness_check_sealed(assets[1]) == 0,
          "a batch's asset is not sealed read-only for a plain user");
    memseal_asset_free(assets[1]);

    char own[64], other[64];
    snprintf(own, sizeof own, "user/%u/ctest", (unsigned)geteuid());
    snprintf(other, sizeof other, "user/%u/ctest", (unsigned)geteuid() + 1);
    uint8_t byte = 42;
    CHECK_CODE(memseal_publish_bytes(client, "ctest/by-user", &byte, 1, NULL),
               MEMSEAL_E_PERMISSION_DENIED);
    CHECK(strstr(memseal_last_error(), "user/") != NULL,
          "the refusal '%s' does not say what is allowed", memseal_last_error());
    CHECK_CODE(memseal_publish_bytes(client, other, &byte, 1, NULL), MEMSEAL_E_PERMISSION_DENIED);
    CHECK_CODE(memseal_remove(client, SHARED_NAME, 0, NULL), MEMSEAL_E_PERMISSION_DENIED);
    CHECK(publish_pattern(client, own, 4096, 12) >= 1, "publish under the user's own prefix");
    memseal_asset *mine = NULL;
    CHECK_OK(memseal_fetch(client, own, &mine));
    CHECK(holds_pattern(mine, 4096, 12), "own asset bytes differ");
    CHECK(memseal_asset_info(mine)->publisher_uid == geteuid(), "publisher uid");
    memseal_asset_free(mine);
    CHECK_OK(memseal_remove(client, own, 0, NULL));
    memseal_close(client);
}

/* ------------------------------------------------- the daemon goes away */

static void run_daemon_down(pid_t daemon) {
    memseal_client *client = connect_or_die();
    memseal_client *batcher = connect_or_die();
    memseal_client *publisher = connect_or_die();
    memseal_asset *asset = NULL;
    CHECK_OK(memseal_fetch(client, SHARED_NAME, &asset));
    CHECK(kill(daemon, SIGTERM) == 0, "kill %d: %s", (int)daemon, strerror(errno));

    /* Wait until nothing listens any more (while it shuts down, a connect
     * may still be accepted, then reset). */
    memseal_client *probe = NULL;
    int code = MEMSEAL_OK;
    for (int tries = 0; tries < 200; tries++) {
        code = memseal_connect(socket_path, &probe);
        memseal_close(probe);
        probe = NULL;
        if (code == MEMSEAL_E_CONNECT) {
            break;
        }
        nanosleep(&(struct timespec){.tv_nsec = 50 * 1000 * 1000}, NULL);
    }
    CHECK(code == MEMSEAL_E_CONNECT, "connect after the daemon stopped returned %d (%s)", code,
          memseal_strerror(code));

    CHECK(holds_pattern(asset, SHARED_LEN, SHARED_SEED), "bytes changed after the daemon stopped");
    CHECK(harness_check_sealed(asset) == 0, "not sealed after the daemon stopped");
    memseal_asset *again = (memseal_asset *)&again;
    code = memseal_fetch(client, SHARED_NAME, &again);
    CHECK(code == MEMSEAL_E_IO || code == MEMSEAL_E_PROTOCOL,
          "fetch from a stopped daemon returned %d (%s)", code, memseal_strerror(code));
    CHECK(again == NULL, "out not NULL");
    CHECK_CODE(memseal_fetch(client, SHARED_NAME, &again), MEMSEAL_E_CONNECTION_LOST);
    memseal_close(client);

    /* A batch whose connection fails fails as a whole, every item with it. */
    memseal_fetch_item items[2] = {{.name = SHARED_NAME}, {.name = SHARED_NAME}};
    memseal_asset *assets[2];
    int codes[2];
    const char *messages[2];
    code = memseal_fetch_many(batcher, items, 2, assets, codes, messages);
    CHECK(code == MEMSEAL_E_IO || code == MEMSEAL_E_PROTOCOL,
          "a batch from a stopped daemon returned %d (%s)", code, memseal_strerror(code));
    CHECK(assets[0] == NULL && assets[1] == NULL && codes[0] == code && codes[1] == code &&
              messages[0] == NULL && messages[1] == NULL,
          "a failed batch: codes %d, %d", codes[0], codes[1]);
    CHECK_CODE(memseal_fetch_many(batcher, items, 2, assets, codes, messages),
               MEMSEAL_E_CONNECTION_LOST);
    CHECK(codes[0] == MEMSEAL_E_CONNECTION_LOST && codes[1] == MEMSEAL_E_CONNECTION_LOST,
          "codes %d, %d after the connection was lost", codes[0], codes[1]);
    memseal_close(batcher);

    /* A descriptor sent to a daemon that is gone: an error, not SIGPIPE.
     * This program keeps SIGPIPE's default action, as C programs do, so
     * a send without MSG_NOSIGNAL would kill it here. */
    int memfd = (int)syscall(SYS_memfd_create, "c-test-down", MFD_CLOEXEC);
    CHECK(memfd >= 0, "memfd_create: %s", strerror(errno));
    CHECK(write(memfd, "late", 4) == 4, "write: %s", strerror(errno));
    uint64_t version = 0;
    code = memseal_publish_fd(publisher, "c/down/late", memfd, &version);
    CHECK(code == MEMSEAL_E_IO || code == MEMSEAL_E_PROTOCOL,
          "publishing a descriptor to a stopped daemon returned %d (%s)", code,
          memseal_strerror(code));
    close(memfd);
    memseal_close(publisher);
    memseal_asset_free(asset);
}

int main(int argc, char **argv) {
    socket_path = getenv("MEMSEAL_SOCKET");
    if (argc < 2 || socket_path == NULL) {
        fprintf(stderr, "usage: MEMSEAL_SOCKET=PATH %s publisher | user | daemon-down PID\n",
                argv[0]);
        return 2;
    }
    test_library_basics();
    test_no_daemon();
    if (strcmp(argv[1], "publisher") == 0) {
        run_publisher();
    } else if (strcmp(argv[1], "user") == 0) {
        run_user();
    } else if (strcmp(argv[1], "daemon-down") == 0 && argc == 3) {
        run_daemon_down((pid_t)atoi(argv[2]));
    } else {
        fprintf(stderr, "unknown mode '%s'\n", argv[1]);
        return 2;
    }
    char suite[64];
    snprintf(suite, sizeof suite, "libmemseal C tests (%s)", argv[1]);
    return harness_finish(suite);
}
