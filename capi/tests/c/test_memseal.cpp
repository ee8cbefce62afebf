// test_memseal.cpp: the C++ wrapper (memseal.hpp) against the real memseald.
// The socket is MEMSEAL_SOCKET; the caller may publish under "cpptest/".
#include <memseal.hpp>

#include <algorithm>
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

        // Many at once: each item by name, version or hash, failing alone.
        const memseal_session_limits *limits = client.session_limits();
        CHECK(limits != nullptr && limits->max_fetch_many >= 1);
        std::vector<memseal::fetch_item> items = {
            {"cpptest/blob"},
            {"cpptest/blob", first},
            {"cpptest/blob", 0, old.info().hash},
            {"cpptest/missing"},
            {"bad//name"},
        };
        std::vector<memseal::fetched> results = client.fetch_many(items);
        CHECK(results.size() == items.size());
        CHECK(results[0] && results[0].value().view() == "second" && results[0].message().empty());
        CHECK(results[1].ok() && results[1].value().version() == first);
        CHECK(results[2].ok() && std::equal(results[2].value().begin(), results[2].value().end(),
                                            bytes.begin(), bytes.end()));
        CHECK(!results[3] && results[3].code() == MEMSEAL_E_NOT_FOUND);
        CHECK(results[3].message().find("cpptest/missing") != std::string::npos);
        CHECK(results[4].code() == MEMSEAL_E_INVALID_NAME);
        try {
            results[3].value();
            CHECK(!"the asset of a failed item did not throw");
        } catch (const memseal::error &e) {
            CHECK(e.code() == MEMSEAL_E_NOT_FOUND);
        }
        memseal::asset taken = std::move(results[0].value());
        CHECK(taken.view() == "second" && results[0].value().get() == nullptr);

        // More items than one request names: split by the library.
        std::size_t many = limits != nullptr ? 2 * limits->max_fetch_many + 1 : 3;
        std::vector<memseal::fetched> split =
            client.fetch_many(std::vector<memseal::fetch_item>(many, {"cpptest/blob", first}));
        CHECK(split.size() == many);
        bool all_first = true;
        for (memseal::fetched &f : split) {
            all_first = all_first && f && f.value().version() == first;
        }
        CHECK(all_first);
        try {
            client.fetch_many({});
            CHECK(!"a batch of no items did not throw");
        } catch (const memseal::error &e) {
            CHECK(e.code() == MEMSEAL_E_BAD_ARGUMENT);
        }

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
