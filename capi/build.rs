//! Gives the shared library its soname, `libmemseal.so.<major>`, so that
//! programs linked against it record the ABI they were built for rather than
//! the file Cargo happened to produce (`libmemseal_capi.so`).

fn main() {
    let major =
        std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmemseal.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
