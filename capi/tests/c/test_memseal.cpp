// test_memseal.cpp: the C++ wrapper (memseal.hpp) against the real memseald.
// The socket is MEMSEAL_SOCKET; the caller may publish under "cpptest/".
#include <memseal.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

static int passed, failed;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                    \
    } while (0)

int main() {
    std::vector<std::uint8_t> bytes(200000);
    for (std::size_t i = 0; i < bytes.size(); i++) {
        bytes[i] = static_cast<std::uint8_t>(i * 13 + 1);
    }

    memseal::asset kept = [&] {
        auto client = memseal::client::connect();  // MEMSEAL_SOCKET
        std::uint64_t first = client.publish("cpptest/blob", bytes.data(), bytes.size());
        std::uint64_t second = client.publish("cpptest/blob", std::string_view("second"));
        CHECK(second == first + 1);

        memseal::asset latest = client.fetch("cpptest/blob");
        CHECK(latest.view() == "second");
        CHECK(latest.version() == second);
        CHECK(latest.name() == "cpptest/blob");
        CHECK(latest.info().size == 6);

        // Moves leave the source empty, and the empty one answers safely.
        memseal::asset moved = std::move(latest);
        CHECK(latest.get() == nullptr && latest.size() == 0);
        CHECK(moved.view() == "second");

        try {
            client.fetch("cpptest/missing");
            CHECK(!"fetching a missing asset did not throw");
        } catch (const memseal::error &e) {
            CHECK(e.code() == MEMSEAL_E_NOT_FOUND);
            CHECK(std::strlen(e.what()) > 0);
        }
        try {
            client.publish("bad//name", std::string_view("x"));
            CHECK(!"publishing under an invalid name did not throw");
        } catch (const memseal::error &e) {
            CHECK(e.code() == MEMSEAL_E_INVALID_NAME);
        }

        memseal::asset old = client.fetch("cpptest/blob", first);
        CHECK(old.size() == bytes.size());
        CHECK(std::equal(old.begin(), old.end(), bytes.begin()));
        CHECK(client.remove("cpptest/blob") == 2);
        return old;  // outlives the client, closed at the end of this lambda
    }();
    CHECK(std::equal(kept.begin(), kept.end(), bytes.begin(), bytes.end()));

    try {
        memseal::client::connect("/nonexistent-memseal-dir/memseald.sock");
        CHECK(!"connecting to nothing did not throw");
    } catch (const memseal::error &e) {
        CHECK(e.code() == MEMSEAL_E_CONNECT);
    }

    std::printf("libmemseal C++ tests: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
