//! `include/memseal.h` is generated from this crate's sources by cbindgen and
//! committed, so that C programmers can read it and build without Rust
//! tooling. This test regenerates it and fails when the committed copy is
//! stale. `MEMSEAL_UPDATE_HEADER=1 cargo test -p memseal-capi --test header`
//! rewrites it instead.

use std::path::Path;

#[test]
fn committed_header_matches_the_sources() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("capi/cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");

    let committed_path = crate_dir.join("include/memseal.h");
    if std::env::var_os("MEMSEAL_UPDATE_HEADER").is_some() {
        std::fs::write(&committed_path, &generated).expect("write include/memseal.h");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "capi/include/memseal.h is stale (first difference at line {}); regenerate it with \
             `MEMSEAL_UPDATE_HEADER=1 cargo test -p memseal-capi --test header` and commit it",
            first_difference + 1
        );
    }
}
