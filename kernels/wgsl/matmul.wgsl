// Dense f32 matrix multiply, C = A × B for n×n matrices. Input: A then B,
// f32 LE, row-major; output: C. Each invocation sums its k-loop in the same
// order as the native and WASM builds (kernels/wasm/matmul).

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> slice: vec4<u32>;
@group(0) @binding(2) var<storage, read> ab: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.n;
    let j = gid.x + slice.x;
    let i = gid.y + slice.y;
    if (i >= n || j >= n) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < n; k = k + 1u) {
        acc = acc + ab[i * n + k] * ab[n * n + k * n + j];
    }
    c[i * n + j] = acc;
}
