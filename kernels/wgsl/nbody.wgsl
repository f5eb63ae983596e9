// One n-body gravity step in f32. Input: n bodies [x, y, z, mass], then
// their velocities [vx, vy, vz, 0]; output: new positions then new
// velocities, in the same layout. Sums run in the order of the native and
// WASM builds (kernels/wasm/nbody); a GPU's sqrt and division need not be
// correctly rounded, so results agree to within float precision.

struct Params {
    n: u32,
    dt: f32,
    eps2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> slice: vec4<u32>;
@group(0) @binding(2) var<storage, read> state: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> next: array<vec4<f32>>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.n;
    let i = gid.x + slice.x;
    if (i >= n) {
        return;
    }
    let me = state[i];
    var ax = 0.0;
    var ay = 0.0;
    var az = 0.0;
    for (var j = 0u; j < n; j = j + 1u) {
        let other = state[j];
        let dx = other.x - me.x;
        let dy = other.y - me.y;
        let dz = other.z - me.z;
        let r2 = dx * dx + dy * dy + dz * dz + p.eps2;
        let s = other.w / (r2 * sqrt(r2));
        ax = ax + dx * s;
        ay = ay + dy * s;
        az = az + dz * s;
    }
    let v = state[n + i];
    let vx = v.x + ax * p.dt;
    let vy = v.y + ay * p.dt;
    let vz = v.z + az * p.dt;
    next[i] = vec4<f32>(me.x + vx * p.dt, me.y + vy * p.dt, me.z + vz * p.dt, me.w);
    next[n + i] = vec4<f32>(vx, vy, vz, 0.0);
}
