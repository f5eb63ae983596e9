// Mandelbrot tile: the escape-time count of each pixel, u32 LE, row-major.
// The same view as the WASM kernel (kernels/wasm/mandelbrot), in f32: GPUs
// have no portable f64. The native reference is
// idlemesh_kernel_mandelbrot::escape_counts_f32, operation for operation.

struct Params {
    width: u32,
    height: u32,
    max_iter: u32,
    tile_x: u32,
    tile_y: u32,
    tile_width: u32,
    tile_height: u32,
    center_re: f32,
    center_im: f32,
    span: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The first invocation of this slice: the host splits a tall tile into
// short submissions so a pause lands between them.
@group(0) @binding(1) var<uniform> slice: vec4<u32>;
@group(0) @binding(2) var<storage, read_write> counts: array<u32>;

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x + slice.x;
    let row = gid.y + slice.y;
    if (col >= p.tile_width || row >= p.tile_height) {
        return;
    }
    let pixel = p.span / f32(p.width);
    let left = p.center_re - p.span / 2.0;
    let top = p.center_im - pixel * f32(p.height) / 2.0;
    let c_re = left + (f32(p.tile_x + col) + 0.5) * pixel;
    let c_im = top + (f32(p.tile_y + row) + 0.5) * pixel;
    var re = 0.0;
    var im = 0.0;
    var i = 0u;
    loop {
        if (i >= p.max_iter) {
            break;
        }
        let re2 = re * re;
        let im2 = im * im;
        if (re2 + im2 > 4.0) {
            break;
        }
        im = 2.0 * re * im + c_im;
        re = re2 - im2 + c_re;
        i = i + 1u;
    }
    counts[row * p.tile_width + col] = i;
}
