//! The fuzz targets' seed corpora (fuzz/corpus/<target>/) replayed as regression tests: every
//! input that ever found a problem is kept there and must keep passing.

#[path = "../fuzz/targets.rs"]
mod targets;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        f(&data);
        n += 1;
    }
    assert!(n > 0, "empty corpus for {target}");
}

#[test]
fn virtio_blk_corpus() {
    replay("virtio_blk", targets::virtio_blk);
}

#[test]
fn virtio_mmio_corpus() {
    replay("virtio_mmio", targets::virtio_mmio);
}

#[test]
fn serial_corpus() {
    replay("serial", targets::serial);
}

#[test]
fn kernel_loader_corpus() {
    replay("kernel_loader", targets::kernel_loader);
}

#[test]
fn config_corpus() {
    replay("config", targets::config);
}
