// HaBa affine modulation, backward pass, for the upstream gradient dy = dL/dy:
//
//     dx[n, p]     = dy[n, p] * scale[h[n], p]
//     dscale[m, p] = sum over the samples n with h[n] == m of dy[n, p] * x[n, p]
//     dshift[m, p] = sum over the samples n with h[n] == m of dy[n, p]
//
// One invocation per (m, p). It walks the samples of hallucinator m in ascending order,
// so every sum is formed in the same order on every run and every device: no float
// atomics, bit-reproducible gradients. It also writes dx for exactly those samples; since
// each sample has one hallucinator, every dx value is written exactly once. A hallucinator
// that no sample uses gets gradients of exactly zero.
//
// info (built by src/kernels/affine.rs):
//     [N, P, M, h[0..N], start[0..=M], members[0..N]]
// members lists the samples grouped by hallucinator, ascending within a group, and
// members[start[m]..start[m + 1]] is the group of hallucinator m.

// Every binding is read_write, inputs too: cubecl sub-allocates tensors from shared wgpu
// buffers, and wgpu refuses one buffer bound both read-only and read-write in a dispatch.
@group(0) @binding(0) var<storage, read_write> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<storage, read_write> dscale: array<f32>;
@group(0) @binding(5) var<storage, read_write> dshift: array<f32>;
@group(0) @binding(6) var<storage, read_write> info: array<u32>;

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
    let hallucinators = info[2];
    if id >= hallucinators * plane {
        return;
    }
    let m = id / plane;
    let p = id - m * plane;
    let starts = 3u + samples;
    let members = starts + hallucinators + 1u;

    let s = scale[id];
    var sum_scale: f32 = 0.0;
    var sum_shift: f32 = 0.0;
    let end = info[starts + m + 1u];
    for (var k = info[starts + m]; k < end; k++) {
        let i = info[members + k] * plane + p;
        let g = dy[i];
        dx[i] = g * s;
        sum_scale += g * x[i];
        sum_shift += g;
    }
    dscale[id] = sum_scale;
    dshift[id] = sum_shift;
}
