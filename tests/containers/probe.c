/*
 * probe.c: what a program inside a container sees of an asset.
 *
 * Usage: memseal-probe NAME
 * Connects to the default socket (as any libmemseal program does), fetches
 * NAME, and proves the mapping sealed and read-only with the checks the C
 * tests use. Prints the socket it reached, the version and the BLAKE3 hash
 * ("hash <hex>"), and the summary line; exits 0 only if every check passed.
 * Linked statically against libmemseal.a, so the container needs nothing
 * else.
 */
#include "harness.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    memseal_client *client = NULL;
    if (memseal_connect(NULL, &client) != MEMSEAL_OK) {
        fprintf(stderr, "memseal-probe: cannot connect: %s\n", memseal_last_error());
        return 1;
    }
    printf("socket %s\n", memseal_client_socket_path(client));
    memseal_asset *asset = NULL;
    CHECK_OK(memseal_fetch(client, argv[1], &asset));
    memseal_close(client);
    if (asset != NULL) {
        char hex[2 * MEMSEAL_HASH_LEN + 1];
        CHECK_OK(memseal_hash_to_hex(memseal_asset_hash(asset), hex, sizeof hex));
        printf("version %llu\nsize %zu\nhash %s\n",
               (unsigned long long)memseal_asset_version(asset), memseal_asset_len(asset), hex);
        harness_check_sealed(asset);
        memseal_asset_free(asset);
    }
    return harness_finish("memseal-probe");
}
