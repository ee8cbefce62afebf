/*
 * memseal.hpp: a small C++17 wrapper over libmemseal (memseal.h).
 *
 * memseal::client and memseal::asset own their handles and free them when
 * they go out of scope; they can be moved, not copied. Failures throw
 * memseal::error, which carries the MEMSEAL_E_* code and the library's
 * message. Everything memseal.h says about threads and lifetimes holds:
 * an asset outlives the client that fetched it, and its bytes never change.
 *
 *     auto client = memseal::client::connect();          // default socket
 *     client.publish("tables/primes", std::string_view("\2\3\5\7", 4));
 *     memseal::asset primes = client.fetch("tables/primes");
 *     for (std::uint8_t p : primes) std::printf("%u\n", p);
 *
 *     // Many at once: one result per item, each an asset or its own error.
 *     for (memseal::fetched &f : client.fetch_many({{"fonts/regular"}, {"fonts/bold", 2}}))
 *         if (f) std::printf("%zu bytes\n", f.value().size());
 */
#ifndef MEMSEAL_HPP
#define MEMSEAL_HPP

#include <memseal.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace memseal {

/** A failed call: code() is the MEMSEAL_E_* code, what() the message. */
class error : public std::runtime_error {
public:
    error(int code, const char *message) : std::runtime_error(message), code_(code) {}
    int code() const noexcept { return code_; }

private:
    int code_;
};

namespace detail {
inline void check(int code) {
    if (code != MEMSEAL_OK) {
        throw error(code, memseal_last_error());
    }
}
}  // namespace detail

/** A fetched asset: read-only bytes that no process can change. */
class asset {
public:
    asset(asset &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    asset &operator=(asset &&other) noexcept {
        if (this != &other) {
            memseal_asset_free(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    asset(const asset &) = delete;
    asset &operator=(const asset &) = delete;
    ~asset() { memseal_asset_free(raw_); }

    const std::uint8_t *data() const noexcept { return memseal_asset_data(raw_); }
    std::size_t size() const noexcept { return memseal_asset_len(raw_); }
    const std::uint8_t *begin() const noexcept { return data(); }
    const std::uint8_t *end() const noexcept { return data() + size(); }
    /** The bytes as characters, for text assets. */
    std::string_view view() const noexcept {
        return {reinterpret_cast<const char *>(data()), size()};
    }
    std::uint64_t version() const noexcept { return memseal_asset_version(raw_); }
    std::string_view name() const noexcept { return memseal_asset_name(raw_); }
    const memseal_info &info() const noexcept { return *memseal_asset_info(raw_); }
    /** The sealed memfd, owned by the asset. */
    int fd() const noexcept { return memseal_asset_fd(raw_); }
    /** The C handle, still owned by this object. */
    memseal_asset *get() const noexcept { return raw_; }

private:
    friend class client;
    explicit asset(memseal_asset *raw) noexcept : raw_(raw) {}
    memseal_asset *raw_;
};

/** One item of client::fetch_many: a name, and a version or a content
 *  hash to select (neither: the latest version). */
struct fetch_item {
    std::string name;
    std::uint64_t version = 0;           ///< the version to fetch, or 0
    const std::uint8_t *hash = nullptr;  ///< MEMSEAL_HASH_LEN bytes, or null
};

/** What client::fetch_many gives for one item: its asset, or the error
 *  that failed this item alone. */
class fetched {
public:
    /** True if the item was fetched. */
    bool ok() const noexcept { return code_ == MEMSEAL_OK; }
    explicit operator bool() const noexcept { return ok(); }
    /** MEMSEAL_OK, or the MEMSEAL_E_* code of the item's failure. */
    int code() const noexcept { return code_; }
    /** Why the item failed; empty if it did not. */
    const std::string &message() const noexcept { return message_; }
    /** The asset; throws memseal::error with the item's code if it failed. */
    memseal::asset &value() {
        if (!ok()) {
            throw error(code_, message_.c_str());
        }
        return asset_;
    }

private:
    friend class client;
    fetched(memseal::asset fetched_asset, int code, std::string message)
        : asset_(std::move(fetched_asset)), code_(code), message_(std::move(message)) {}
    memseal::asset asset_;
    int code_;
    std::string message_;
};

/** A connection to memseald. */
class client {
public:
    /** Connect to socket_path, or to the default socket when it is null. */
    static client connect(const char *socket_path = nullptr) {
        memseal_client *raw = nullptr;
        detail::check(memseal_connect(socket_path, &raw));
        return client(raw);
    }

    client(client &&other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    client &operator=(client &&other) noexcept {
        if (this != &other) {
            memseal_close(raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    client(const client &) = delete;
    client &operator=(const client &) = delete;
    ~client() { memseal_close(raw_); }

    /** The latest version of name. */
    asset fetch(const std::string &name) {
        memseal_asset *raw = nullptr;
        detail::check(memseal_fetch(raw_, name.c_str(), &raw));
        return asset(raw);
    }

    /** Version `version` of name. */
    asset fetch(const std::string &name, std::uint64_t version) {
        memseal_asset *raw = nullptr;
        detail::check(memseal_fetch_version(raw_, name.c_str(), version, &raw));
        return asset(raw);
    }

    /**
     * Every item at once, in as few round trips as the daemon allows: one
     * result per item, in order. An item that fails (not found, an invalid
     * name, ...) fails alone; throws only when the call as a whole fails
     * (no items, or a failure of the connection).
     */
    std::vector<fetched> fetch_many(const std::vector<fetch_item> &items) {
        std::vector<memseal_fetch_item> raw_items;
        raw_items.reserve(items.size());
        for (const fetch_item &item : items) {
            raw_items.push_back({item.name.c_str(), item.version, item.hash});
        }
        std::vector<memseal_asset *> raw_assets(items.size());
        std::vector<int> codes(items.size());
        std::vector<const char *> messages(items.size());
        // Allocated before the call, so that once the assets are ours
        // only building the messages can throw, and then the assets are
        // already owned by `assets`, which frees them.
        std::vector<asset> assets;
        assets.reserve(items.size());
        std::vector<fetched> results;
        results.reserve(items.size());
        detail::check(memseal_fetch_many(raw_, raw_items.data(), raw_items.size(),
                                         raw_assets.data(), codes.data(), messages.data()));
        for (memseal_asset *raw : raw_assets) {
            assets.push_back(asset(raw));
        }
        for (std::size_t i = 0; i < items.size(); i++) {
            results.push_back(
                fetched(std::move(assets[i]), codes[i], messages[i] ? messages[i] : ""));
        }
        return results;
    }

    /** What this connection may do at most (see memseal_client_session_limits);
     *  null from a daemon that speaks only protocol version 1. */
    const memseal_session_limits *session_limits() const noexcept {
        return memseal_client_session_limits(raw_);
    }

    /** Publish bytes as the next version of name; returns that version. */
    std::uint64_t publish(const std::string &name, const void *data, std::size_t size) {
        std::uint64_t version = 0;
        detail::check(memseal_publish_bytes(raw_, name.c_str(),
                                            static_cast<const std::uint8_t *>(data), size,
                                            &version));
        return version;
    }
    std::uint64_t publish(const std::string &name, std::string_view bytes) {
        return publish(name, bytes.data(), bytes.size());
    }

    /** Remove one version of name, or all of them for 0; returns how many. */
    std::uint64_t remove(const std::string &name, std::uint64_t version = 0) {
        std::uint64_t removed = 0;
        detail::check(memseal_remove(raw_, name.c_str(), version, &removed));
        return removed;
    }

    /** The C handle, still owned by this object. */
    memseal_client *get() const noexcept { return raw_; }

private:
    explicit client(memseal_client *raw) noexcept : raw_(raw) {}
    memseal_client *raw_;
};

}  // namespace memseal

#endif /* MEMSEAL_HPP */
