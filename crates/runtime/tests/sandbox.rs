//! The sandbox against real kernels: same bytes as native, statuses for failures.

use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_runtime::{NoEvents, RunLimits, Sandbox, SandboxConfig, Status};

const PARAMS: &str = r#"{"width":96,"height":64,"max_iter":200,"tile":{"x":16,"y":8,"width":40,"height":30}}"#;

#[test]
fn mandelbrot_wasm_equals_native_byte_for_byte() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let outcome = sandbox.run(idlemesh_kernels::MANDELBROT, b"", PARAMS, None, &RunLimits::default(), NoEvents);
    assert_eq!(outcome.status, Status::Ok, "{:?}", outcome.error);
    let params: mandelbrot::Params = serde_json::from_str(PARAMS).unwrap();
    let native = mandelbrot::render_tile(&params, params.tile_or_whole()).unwrap();
    assert_eq!(outcome.output.len(), 40 * 30 * 3);
    assert!(outcome.output == native, "WASM output differs from native");
    assert!(outcome.peak_memory_bytes > 0);
}

#[test]
fn kernel_errors_and_limits_have_their_statuses() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let bad = sandbox.run(idlemesh_kernels::MANDELBROT, b"", "{", None, &RunLimits::default(), NoEvents);
    assert_eq!(bad.status, Status::Error);
    assert!(bad.error.unwrap().contains("bad params"));

    let tiny_memory = RunLimits { max_memory_bytes: 64 * 1024, ..RunLimits::default() };
    let oom = sandbox.run(idlemesh_kernels::MANDELBROT, b"", PARAMS, None, &tiny_memory, NoEvents);
    assert_eq!(oom.status, Status::OutOfMemory, "{:?}", oom.error);

    let small_output = RunLimits { max_output_bytes: 100, ..RunLimits::default() };
    let big = sandbox.run(idlemesh_kernels::MANDELBROT, b"", PARAMS, None, &small_output, NoEvents);
    assert_eq!(big.status, Status::Error);
    assert!(big.error.unwrap().contains("exceeds the cap"));

    let not_wasm = sandbox.run(b"\0asm garbage", b"", PARAMS, None, &RunLimits::default(), NoEvents);
    assert_eq!(not_wasm.status, Status::InvalidKernel);
}

#[test]
fn fuel_is_metered_deterministically_and_enforced() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let metered = RunLimits { max_fuel: Some(u64::MAX / 2), ..RunLimits::default() };
    let a = sandbox.run(idlemesh_kernels::MANDELBROT, b"", PARAMS, None, &metered, NoEvents);
    let b = sandbox.run(idlemesh_kernels::MANDELBROT, b"", PARAMS, None, &metered, NoEvents);
    assert_eq!(a.status, Status::Ok);
    let fuel = a.fuel.unwrap();
    assert!(fuel > 100_000, "fuel {fuel}");
    assert_eq!(a.fuel, b.fuel);
    let starved = RunLimits { max_fuel: Some(fuel / 2), ..RunLimits::default() };
    let c = sandbox.run(idlemesh_kernels::MANDELBROT, b"", PARAMS, None, &starved, NoEvents);
    assert_eq!(c.status, Status::OutOfFuel);
}

#[test]
fn compiled_kernels_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = SandboxConfig { cache_dir: Some(dir.path().to_owned()), ..SandboxConfig::default() };
    let first = Sandbox::new(config.clone()).unwrap().run(
        idlemesh_kernels::MANDELBROT,
        b"",
        PARAMS,
        None,
        &RunLimits::default(),
        NoEvents,
    );
    assert!(!first.cache_hit);
    let second = Sandbox::new(config).unwrap().run(
        idlemesh_kernels::MANDELBROT,
        b"",
        PARAMS,
        None,
        &RunLimits::default(),
        NoEvents,
    );
    assert!(second.cache_hit);
    assert_eq!(first.output, second.output);
}

#[test]
fn every_kernel_matches_its_native_build() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let run = |kernel: &[u8], input: &[u8], params: &str| {
        let o = sandbox.run(kernel, input, params, None, &RunLimits::default(), NoEvents);
        assert_eq!(o.status, Status::Ok, "{params}: {:?}", o.error);
        o.output
    };
    let params = r#"{"seed":"idlemesh","iterations":1000}"#;
    assert_eq!(run(idlemesh_kernels::SHA256CHAIN, b"", params), idlemesh_kernel_sha256chain::run(b"", params).unwrap());
    assert_eq!(
        run(idlemesh_kernels::SHA256CHAIN, b"other seed", params),
        idlemesh_kernel_sha256chain::chain(b"other seed", 1000)
    );
    let params = r#"{"n":48,"seed":11}"#;
    assert!(
        run(idlemesh_kernels::MATMUL, b"", params) == idlemesh_kernel_matmul::run(params).unwrap(),
        "matmul differs from native"
    );
    let bodies = idlemesh_kernel_nbody::bodies(64, 5);
    let params = r#"{"n":64,"dt":0.01,"eps2":0.001}"#;
    let wasm = run(idlemesh_kernels::NBODY, &bodies, params);
    assert_eq!(wasm.len(), 64 * 32);
    assert!(wasm == idlemesh_kernel_nbody::run(&bodies, params).unwrap(), "nbody differs from native");
    let image: Vec<u8> = (0..32u32 * 16 * 4).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let params = r#"{"width":32,"height":16,"factor":4}"#;
    let wasm = run(idlemesh_kernels::DOWNSCALE, &image, params);
    assert_eq!(wasm.len(), 8 * 4 * 4);
    assert_eq!(wasm, idlemesh_kernel_downscale::run(&image, params).unwrap());
}

/// Downscale imports `read-input`: its image reaches it a band at a time,
/// so a 16 MiB image runs under a memory cap of half that, with the same
/// output as native. A kernel without the import still gets its input in
/// `run`, whole (sha256chain seeded by its input, above).
#[test]
fn a_kernel_that_reads_its_input_on_request_never_holds_it_whole() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let image: Vec<u8> = (0..2048u32 * 2048 * 4).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let params = r#"{"width":2048,"height":2048,"factor":4}"#;
    let half = RunLimits { max_memory_bytes: 8 << 20, ..RunLimits::default() };
    let o = sandbox.run(idlemesh_kernels::DOWNSCALE, &image, params, None, &half, NoEvents);
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert!(o.output == idlemesh_kernel_downscale::run(&image, params).unwrap(), "downscale differs from native");
    assert!(o.peak_memory_bytes < 8 << 20, "peak {} bytes for a 16 MiB image", o.peak_memory_bytes);
    // Too short an input is named, not read past.
    let short = sandbox.run(idlemesh_kernels::DOWNSCALE, &image[..100], params, None, &half, NoEvents);
    assert_eq!(short.status, Status::Error);
    assert!(short.error.unwrap().contains("input is 100 bytes"));
}

/// What a kernel told its host, kept for the test: (progress, checkpoints).
#[derive(Clone, Default)]
struct Told(std::sync::Arc<std::sync::Mutex<Reports>>);
type Reports = (Vec<f32>, Vec<Vec<u8>>);

impl idlemesh_runtime::Events for Told {
    fn progress(&mut self, done: f32) {
        self.0.lock().unwrap().0.push(done);
    }
    fn checkpoint(&mut self, state: Vec<u8>) {
        self.0.lock().unwrap().1.push(state);
    }
}

/// kernels/c/histogram, written in C and made a component at build time,
/// runs on the same contract as the Rust kernels: its output, its
/// progress and checkpoints, resuming, and its errors.
#[test]
fn a_kernel_written_in_c_counts_as_its_definition_says() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let input: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 26) as u8 ^ (i as u8)).collect();
    let mut expected = [0u64; 256];
    for b in &input {
        expected[usize::from(*b)] += 1;
    }
    let expected: Vec<u8> = expected.iter().flat_map(|c| c.to_le_bytes()).collect();

    let told = Told::default();
    let o = sandbox.run(idlemesh_kernels::HISTOGRAM_C, &input, "{}", None, &RunLimits::default(), told.clone());
    assert_eq!(o.status, Status::Ok, "{:?}", o.error);
    assert!(o.output == expected, "the C kernel's counts differ from the definition's");
    let (progress, checkpoints) = told.0.lock().unwrap().clone();
    assert_eq!(progress.last(), Some(&1.0), "{progress:?}");
    assert_eq!(checkpoints.len(), 2, "one between each two of its three 1 MiB chunks");

    // Resumed from its first checkpoint, it ends with the same counts.
    let resumed =
        sandbox.run(idlemesh_kernels::HISTOGRAM_C, &input, "", Some(&checkpoints[0]), &RunLimits::default(), NoEvents);
    assert_eq!(resumed.status, Status::Ok, "{:?}", resumed.error);
    assert!(resumed.output == expected, "resumed counts differ");

    // Its errors reach the report in its own words.
    let bad = sandbox.run(idlemesh_kernels::HISTOGRAM_C, b"x", r#"{"bins":16}"#, None, &RunLimits::default(), NoEvents);
    assert_eq!(bad.status, Status::Error);
    assert!(bad.error.unwrap().contains("takes no params"));
    let cut = sandbox.run(
        idlemesh_kernels::HISTOGRAM_C,
        b"x",
        "{}",
        Some(&checkpoints[0][..9]),
        &RunLimits::default(),
        NoEvents,
    );
    assert_eq!(cut.status, Status::Error);
    assert!(cut.error.unwrap().contains("checkpoint has the wrong size"));
}
