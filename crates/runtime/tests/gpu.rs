//! WGSL kernels on the machine's real wgpu adapter (Mesa's lavapipe in CI):
//! known answers shared with the native and WASM builds, and every way a
//! task can be wrong ending in its own status.

use std::sync::Mutex;
use std::time::Duration;

use idlemesh_kernel_mandelbrot as mandelbrot;
use idlemesh_kernels::wgsl;
use idlemesh_protocol::Sha256;
use idlemesh_protocol::wgsl::WgslLayout;
use idlemesh_runtime::gpu::{Gpu, GpuRun};
use idlemesh_runtime::{Events, NoEvents, RunLimits, Sandbox, SandboxConfig, Status};

/// One device for the whole file: opening one costs ~100 ms on lavapipe.
static GPU: Mutex<Option<Gpu>> = Mutex::new(None);

fn run_with(
    shader: &str,
    layout: &str,
    input: &[u8],
    params: &str,
    limits: RunLimits,
    events: &mut impl Events,
) -> GpuRun {
    let layout: WgslLayout = serde_json::from_str(layout).expect("layout parses");
    let mut gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu.get_or_insert_with(|| Gpu::open().expect("a wgpu adapter (scripts/setup installs lavapipe)"));
    let stall = Duration::from_secs(60);
    gpu.run(Sha256::of(shader.as_bytes()), shader.as_bytes(), &layout, input, params, &limits, stall, events)
}

fn run(shader: &str, layout: &str, input: &[u8], params: &str) -> GpuRun {
    run_with(shader, layout, input, params, RunLimits::default(), &mut NoEvents)
}

fn ok(r: GpuRun) -> Vec<u8> {
    assert_eq!(r.outcome.status, Status::Ok, "{:?}", r.outcome.error);
    assert!(!r.retire);
    assert!(r.outcome.adapter.as_deref().is_some_and(|a| !a.is_empty()), "the adapter is reported");
    r.outcome.output
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn mandelbrot_matches_the_f32_reference_and_the_wasm_image() {
    let params = r#"{"width":96,"height":64,"max_iter":200,"center_re":-0.5,"center_im":0.0,"span":3.0,
                     "tile":{"x":16,"y":8,"width":40,"height":30}}"#;
    let counts: Vec<u32> = ok(run(wgsl::MANDELBROT, wgsl::MANDELBROT_LAYOUT, b"", params))
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let p: mandelbrot::Params = serde_json::from_str(params).unwrap();
    let tile = p.tile_or_whole();
    // WGSL lets a GPU fuse a multiply and an add (lavapipe does), and the
    // escape-time iteration amplifies that last bit near the set's edge:
    // measured 7 of these 1,200 pixels differ from the unfused native f32.
    let reference = mandelbrot::escape_counts_f32(&p, tile).unwrap();
    assert_eq!(counts.len(), reference.len());
    let same = counts.iter().zip(&reference).filter(|(a, b)| a == b).count();
    assert!(same * 100 >= counts.len() * 98, "{same} of {} pixels agree with native f32", counts.len());
    // A GPU is deterministic with itself: the same run gives the same bytes.
    let again = ok(run(wgsl::MANDELBROT, wgsl::MANDELBROT_LAYOUT, b"", params));
    assert!(again.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).eq(counts.iter().copied()));

    // The WASM kernel renders the same view in f64: the images agree except
    // where f32 rounding moves a pixel near the set's boundary.
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let image = sandbox.run(idlemesh_kernels::MANDELBROT, b"", params, None, &RunLimits::default(), NoEvents);
    assert_eq!(image.status, Status::Ok);
    let same = image
        .output
        .chunks_exact(3)
        .zip(&counts)
        .filter(|&(rgb, &n)| *rgb == mandelbrot::palette(n, p.max_iter))
        .count();
    assert!(same * 100 >= counts.len() * 97, "{same} of {} pixels agree with the f64 image", counts.len());
}

#[test]
fn matmul_and_nbody_match_their_native_builds() {
    let n = 48;
    let (a, b) = (idlemesh_kernel_matmul::matrix(n, 3), idlemesh_kernel_matmul::matrix(n, 4));
    let input: Vec<u8> = a.iter().chain(&b).flat_map(|v| v.to_le_bytes()).collect();
    let gpu = floats(&ok(run(wgsl::MATMUL, wgsl::MATMUL_LAYOUT, &input, r#"{"n":48}"#)));
    let native = idlemesh_kernel_matmul::multiply(n, &a, &b);
    assert_eq!(gpu.len(), native.len());
    // A GPU may fuse a multiply and an add (WGSL allows it): allow an ulp's
    // worth per term, far below what a wrong index would produce.
    for (g, c) in gpu.iter().zip(&native) {
        assert!((g - c).abs() <= 1e-5 * n as f32, "matmul: {g} vs {c}");
    }

    let bodies = idlemesh_kernel_nbody::bodies(200, 9);
    let params = r#"{"n":200,"dt":0.01,"eps2":0.001}"#;
    let gpu = floats(&ok(run(wgsl::NBODY, wgsl::NBODY_LAYOUT, &bodies, params)));
    let native = floats(&idlemesh_kernel_nbody::run(&bodies, params).unwrap());
    assert_eq!(gpu.len(), native.len());
    for (i, (g, c)) in gpu.iter().zip(&native).enumerate() {
        assert!((g - c).abs() <= 1e-4 * c.abs().max(1.0), "nbody value {i}: {g} vs {c}");
    }
    assert_ne!(floats(&bodies)[..800], gpu[..800], "the bodies moved");
}

#[derive(Default)]
struct Progress(Vec<f32>);

impl Events for Progress {
    fn progress(&mut self, done: f32) {
        self.0.push(done);
    }
    fn checkpoint(&mut self, _: Vec<u8>) {}
}

#[test]
fn a_large_dispatch_is_split_into_short_submissions() {
    // 1024 rows of heavy pixels: far more than one slice's worth.
    let params = r#"{"width":256,"height":1024,"max_iter":2000,"center_re":-0.5,"center_im":0.0,"span":3.0,
                     "tile":{"x":0,"y":0,"width":256,"height":1024}}"#;
    let mut progress = Progress::default();
    let r = run_with(wgsl::MANDELBROT, wgsl::MANDELBROT_LAYOUT, b"", params, RunLimits::default(), &mut progress);
    let counts = ok(r);
    assert_eq!(counts.len(), 256 * 1024 * 4);
    // Every slice landed where it belongs: rows rendered as a small tile of
    // their own (one submission) equal the same rows of the sliced run.
    for y in [0u32, 77, 512, 1016] {
        let tile = params.replace(
            r#""tile":{"x":0,"y":0,"width":256,"height":1024}"#,
            &format!(r#""tile":{{"x":0,"y":{y},"width":256,"height":8}}"#),
        );
        let rows = ok(run(wgsl::MANDELBROT, wgsl::MANDELBROT_LAYOUT, b"", &tile));
        let at = y as usize * 256 * 4;
        assert!(rows == counts[at..at + rows.len()], "rows {y}..{} differ", y + 8);
    }
    let steps = &progress.0;
    assert!(steps.len() >= 4, "split into {} submissions", steps.len());
    assert!(steps.windows(2).all(|w| w[0] < w[1]) && *steps.last().unwrap() == 1.0, "{steps:?}");
}

#[test]
fn bad_shaders_layouts_and_inputs_get_their_statuses() {
    let layout = wgsl::MATMUL_LAYOUT;
    let input = vec![0u8; 4 * 4 * 8];
    let params = r#"{"n":4}"#;
    // (shader, layout, input, params, status, what the error says)
    type Case<'a> = (&'a str, &'a str, &'a [u8], &'a str, Status, &'a str);
    let cases: &[Case] = &[
        ("fn main( {", layout, &input, params, Status::InvalidKernel, "does not parse"),
        (
            "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }",
            layout,
            &input,
            params,
            Status::InvalidKernel,
            "",
        ),
        (
            wgsl::MATMUL,
            &layout.replace("\"main\"", "\"other\""),
            &input,
            params,
            Status::InvalidKernel,
            "no entry point \"other\"",
        ),
        (
            wgsl::MATMUL,
            &layout.replace("\"binding\": 3", "\"binding\": 4"),
            &input,
            params,
            Status::InvalidKernel,
            "@binding(3) is not in the layout",
        ),
        (
            wgsl::MATMUL,
            &layout.replace("\"role\": \"input\"", "\"role\": \"scratch\""),
            &input,
            params,
            Status::InvalidKernel,
            "must be var<storage, read_write>",
        ),
        (wgsl::MATMUL, layout, &input[..64], params, Status::Error, "only 64 are left"),
        (wgsl::MATMUL, layout, &input, r#"{"n":"4"}"#, Status::Error, "\"n\" must be"),
        (wgsl::MATMUL, layout, &input, r#"{}"#, Status::Error, "\"n\" is missing"),
        (wgsl::MATMUL, layout, &input, "[1]", Status::Error, "JSON object"),
    ];
    for (shader, layout, input, params, status, message) in cases {
        let r = run(shader, layout, input, params);
        let error = r.outcome.error.clone().unwrap_or_default();
        assert_eq!(r.outcome.status, *status, "{shader:.30} / {params}: {error}");
        assert!(error.contains(message), "{error:?} should say {message:?}");
        assert!(!r.retire, "a refused task leaves the device usable");
    }

    // A params struct larger than the fields the layout packs is named, and
    // the device stays usable.
    let wide = "struct P { n: u32, a: u32, b: u32, c: u32, d: u32 }
                @group(0) @binding(0) var<uniform> p: P;
                @group(0) @binding(1) var<storage, read_write> out: array<u32>;
                @compute @workgroup_size(1) fn main() { out[0] = p.d; }";
    let wide_layout = r#"{"invocations": [1], "bindings": [
        {"binding": 0, "role": "params", "fields": [{"name": "n", "type": "u32"}]},
        {"binding": 1, "role": "output", "size": 4}]}"#;
    let r = run(wide, wide_layout, b"", r#"{"n":1}"#);
    assert_eq!(r.outcome.status, Status::Error, "{:?}", r.outcome.error);
    assert!(r.outcome.error.unwrap().contains("binding 0 is 16 bytes, but the shader's type for it needs 20"));
    assert!(!r.retire);

    // Buffers over the task's memory limit are refused before allocation.
    let big = RunLimits { max_memory_bytes: 1 << 20, ..RunLimits::default() };
    let params = r#"{"n":512}"#;
    let r = run_with(wgsl::MATMUL, layout, &vec![0; 512 * 512 * 8], params, big, &mut NoEvents);
    assert_eq!(r.outcome.status, Status::OutOfMemory, "{:?}", r.outcome.error);
    // Output over its cap.
    let small = RunLimits { max_output_bytes: 1000, ..RunLimits::default() };
    let r = run_with(wgsl::MATMUL, layout, &vec![0; 32 * 32 * 8], r#"{"n":32}"#, small, &mut NoEvents);
    assert_eq!(r.outcome.status, Status::Error);
    assert!(r.outcome.error.unwrap().contains("exceeds the cap"));

    // And the device still works.
    ok(run(wgsl::MATMUL, layout, &input, r#"{"n":4}"#));
}

#[test]
fn inputs_get_exactly_their_bytes_and_empty_outputs_are_empty() {
    // Two inputs of 6 and 2 bytes: each gets its own bytes, zero-padded to
    // a whole word; the shader copies the three words out.
    let shader = "@group(0) @binding(0) var<storage, read> a: array<u32>;
                  @group(0) @binding(1) var<storage, read> b: array<u32>;
                  @group(0) @binding(2) var<storage, read_write> out: array<u32>;
                  @compute @workgroup_size(1) fn main() { out[0] = a[0]; out[1] = a[1]; out[2] = b[0]; }";
    let layout = r#"{"invocations": [1], "bindings": [
        {"binding": 0, "role": "input", "size": 6}, {"binding": 1, "role": "input", "size": 2},
        {"binding": 2, "role": "output", "size": 12}]}"#;
    let out = ok(run(shader, layout, &[1, 2, 3, 4, 5, 6, 7, 8], "{}"));
    assert_eq!(out, [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 0, 0]);

    let empty = r#"{"invocations": [1], "bindings": [
        {"binding": 0, "role": "input", "size": 6}, {"binding": 1, "role": "input", "size": 2},
        {"binding": 2, "role": "output", "size": "n"}]}"#;
    assert!(ok(run(shader, empty, &[0; 8], r#"{"n": 0}"#)).is_empty());
}
