// HaBa affine modulation, forward pass:
//
//     y[n, p] = scale[h[n], p] * x[n, p] + shift[h[n], p]
//
// x and y are [N, C, H, W], scale and shift are [M, C, H, W], all contiguous, and p runs
// over the P = C * H * W values of one image. Sample n uses its own hallucinator h[n].
// One invocation per output value.
//
// info (shared with the backward kernel, built by src/kernels/affine.rs):
//     [N, P, M, h[0..N], start[0..=M], members[0..N]]
// Only N, P and h are read here.

// Every binding is read_write, inputs too: cubecl sub-allocates tensors from shared wgpu
// buffers, and wgpu refuses one buffer bound both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> scale: array<f32>;
@group(0) @binding(2) var<storage, read_write> shift: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const WORKGROUP_SIZE: u32 = {{ workgroup_size }}u;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
) {
    // Large launches spread their workgroups over x and y (at most 65,535 per dimension).
    let id = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_index;
    let samples = info[0];
    let plane = info[1];
    if id >= samples * plane {
        return;
    }
    let n = id / plane;
    let p = id - n * plane;
    let k = info[3u + n] * plane + p;
    y[id] = scale[k] * x[id] + shift[k];
}
