//! 3×3 convolutions with padding 1 by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into 2×2 tiles; each reads a 4×4 input tile. In the transformed
//! domain a tile's 16 values are products of transformed input and transformed filter, so
//! the convolution becomes 16 matrix products of `[Cout, Cin]` by `[Cin, tiles]`: 16
//! multiplications per output tile where unfolding needs 36, 2.25 times fewer. A
//! ConvNet-128's second and third layers, nine tenths of an MTT iteration's arithmetic,
//! are such convolutions.
//!
//! With `V = Bᵀ d B` (input tile `d`), `U = G g Gᵀ` (filter `g`) and `Y = Aᵀ M A`,
//! `M = Σ_ci U ⊙ V`, the gradients are the adjoints of these linear maps:
//! - `dM = A dY Aᵀ` per output tile;
//! - `dx`: `dV = Σ_co U ⊙ dM`, then `B dV Bᵀ` added onto the input tile (tiles overlap);
//! - `dW`: `dU = Σ_tiles dM ⊙ V`, then `Gᵀ dU G`.
//!
//! Every transformed buffer keeps channels innermost (`[tiles][16][C]`, the filters
//! `[C][16][C']`): a tile's transform then works on whole vectors of channels, and each
//! of the 16 products reads its operands column-major, which gemm's kernels take as they
//! are (a row-major right operand gets packed first). Images are turned channels-innermost (padded) before the
//! input transforms and back after the output transforms. Samples go through in blocks of
//! about [`BLOCK_TILES`] tiles, so those buffers stay a few MB whatever the batch.

use std::mem::MaybeUninit;
use std::ops::{Add, Mul, Neg, Range, Sub};

use rayon::prelude::*;

use super::{Geometry, Mat, gemm_at};
use crate::kernels::written;

/// Narrower convolutions (the first layer, on 1 or 3 image channels) gain little and stay
/// on the unfolding path, as do channel counts off a multiple of [`LANES`].
const MIN_CHANNELS: usize = 16;

/// Tiles transformed at once (a block of whole samples, at least one).
const BLOCK_TILES: usize = 1024;

/// Whether [`forward`] and [`backward`] take this convolution.
pub(super) fn applies(g: &Geometry) -> bool {
    let channels = |c: usize| c >= MIN_CHANNELS && c.is_multiple_of(LANES);
    g.k == 3 && g.pad == 1 && channels(g.cin) && channels(g.cout)
}

/// Channels a tile's transform handles at once: one SSE register. Lanes of 8 or 16 built
/// for AVX2 or AVX-512 measured slower here (the 16 values of a tile no longer stay in
/// registers).
const LANES: usize = 4;

/// [`LANES`] channels of one pixel.
#[derive(Clone, Copy)]
struct Lanes([f32; LANES]);

impl Add for Lanes {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|i| self.0[i] + o.0[i]))
    }
}

impl Sub for Lanes {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|i| self.0[i] - o.0[i]))
    }
}

impl Neg for Lanes {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        Lanes(self.0.map(|v| -v))
    }
}

impl Mul<f32> for Lanes {
    type Output = Self;
    #[inline(always)]
    fn mul(self, s: f32) -> Self {
        Lanes(self.0.map(|v| v * s))
    }
}

impl Lanes {
    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        Lanes(src[..LANES].try_into().expect("LANES values"))
    }

    #[inline(always)]
    fn store(self, dst: &mut [MaybeUninit<f32>]) {
        for (d, v) in dst[..LANES].iter_mut().zip(self.0) {
            d.write(v);
        }
    }

    #[inline(always)]
    fn add_to(self, dst: &mut [f32]) {
        for (d, v) in dst[..LANES].iter_mut().zip(self.0) {
            *d += v;
        }
    }
}

/// What the transforms compute on: a value, or a vector of channels.
trait Value:
    Copy + Add<Output = Self> + Sub<Output = Self> + Neg<Output = Self> + Mul<f32, Output = Self>
{
}
impl Value for f32 {}
impl Value for Lanes {}

// The 1-D transforms and their adjoints; `both` applies one along each axis of a tile.

/// `Bᵀ d`.
#[inline(always)]
fn bt<T: Value>(d: [T; 4]) -> [T; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `B v`, the adjoint of [`bt`].
#[inline(always)]
fn b<T: Value>(v: [T; 4]) -> [T; 4] {
    [v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], -v[3]]
}

/// `G g`.
#[inline(always)]
fn g<T: Value>(w: [T; 3]) -> [T; 4] {
    let (even, odd) = ((w[0] + w[2]) * 0.5, w[1] * 0.5);
    [w[0], even + odd, even - odd, w[2]]
}

/// `Gᵀ u`, the adjoint of [`g`].
#[inline(always)]
fn gt<T: Value>(u: [T; 4]) -> [T; 3] {
    let (sum, diff) = ((u[1] + u[2]) * 0.5, (u[1] - u[2]) * 0.5);
    [u[0] + sum, diff, sum + u[3]]
}

/// `Aᵀ m`.
#[inline(always)]
fn at<T: Value>(m: [T; 4]) -> [T; 2] {
    [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]
}

/// `A y`, the adjoint of [`at`].
#[inline(always)]
fn a<T: Value>(y: [T; 2]) -> [T; 4] {
    [y[0], y[0] + y[1], y[0] - y[1], -y[1]]
}

/// `T x Tᵀ` for the 1-D transform `t`: down the columns, then along the rows.
#[inline(always)]
fn both<T: Value, const I: usize, const O: usize>(
    x: [[T; I]; I],
    t: impl Fn([T; I]) -> [T; O],
) -> [[T; O]; O] {
    let cols: [[T; O]; I] = std::array::from_fn(|j| t(std::array::from_fn(|i| x[i][j])));
    std::array::from_fn(|o| t(std::array::from_fn(|j| cols[j][o])))
}

/// The 2×2 output tiles covering the output (the last row or column may be cut off).
#[derive(Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
}

impl Tiles {
    fn new(g: &Geometry) -> Self {
        Self {
            rows: g.ho.div_ceil(2),
            cols: g.wo.div_ceil(2),
        }
    }

    fn per_sample(&self) -> usize {
        self.rows * self.cols
    }

    /// Blocks of whole samples, about [`BLOCK_TILES`] tiles each.
    fn blocks(&self, n: usize) -> impl Iterator<Item = Range<usize>> {
        let per = (BLOCK_TILES / self.per_sample()).max(1);
        (0..n.div_ceil(per)).map(move |i| i * per..((i + 1) * per).min(n))
    }

    /// Rows and columns of an input padded for every tile: one before, and enough after.
    fn padded(&self) -> [usize; 2] {
        [2 * self.rows + 2, 2 * self.cols + 2]
    }
}

/// A raw pointer that parallel tasks share, each writing its own elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used to hand disjoint elements of one buffer to threads.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not its field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `rows × cols` with columns `cs` apart, as the transformed buffers hold their matrices.
fn col_major(data: &[f32], rows: usize, cols: usize, cs: usize) -> Mat<'_> {
    assert!(
        rows <= cs || cols == 1,
        "columns apart by at least a column"
    );
    Mat::strided(data, rows, cols, 1, cs)
}

/// For each transformed position ξ of the 16, `dst (+)= a · b` with `(a, b) = mats(ξ)`,
/// over Rayon's threads; ξ's destination is column-major, starting `ξ * step` into `dst`
/// with columns `cs` apart.
///
/// # Safety
/// The 16 destinations must be disjoint, and `dst` initialised when `accumulate`.
unsafe fn products<'a>(
    dst: &mut [MaybeUninit<f32>],
    step: usize,
    cs: usize,
    accumulate: bool,
    mats: impl Fn(usize) -> (Mat<'a>, Mat<'a>) + Sync,
) {
    let base = Shared(dst.as_mut_ptr().cast());
    let len = dst.len();
    (0..16).into_par_iter().for_each(|xi| {
        let (a, b) = mats(xi);
        assert!(
            xi * step + (b.cols - 1) * cs + a.rows <= len,
            "destination inside its buffer"
        );
        // SAFETY: the destination lies inside `dst` (checked above), which the inputs do
        // not overlap, and the caller keeps the 16 destinations apart.
        unsafe { gemm_at(base.at(xi * step), [1, cs], accumulate, a, b) };
    });
}

/// `[tiles][16][rows]`: for each position ξ, `A_ξ [rows, k] · B_ξ [k, tiles]`, with `a`
/// laid out `[k][16][rows]` and `b` `[tiles][16][k]` (the forward's `U · V` and the input
/// gradient's `Uᵀ · dM`).
fn tile_products(a: &[f32], b: &[f32], rows: usize, k: usize, tiles: usize) -> Vec<f32> {
    let mut out = uninit(tiles * 16 * rows);
    // SAFETY: position ξ writes `[t][ξ][..rows]` for every tile: disjoint.
    unsafe {
        products(&mut out, rows, 16 * rows, false, |xi| {
            (
                col_major(&a[xi * rows..], rows, k, 16 * rows),
                col_major(&b[xi * k..], k, tiles, 16 * k),
            )
        });
    }
    // SAFETY: the 16 products wrote every element.
    unsafe { assume_init(out) }
}

/// A `len`-value buffer whose elements the caller writes before reading any.
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` asks nothing of its contents.
    unsafe { v.set_len(len) };
    v
}

/// The values of a buffer every element of which was written.
///
/// # Safety
/// Every element must be initialised.
unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the same allocation, length and capacity, and `MaybeUninit<f32>` has the
    // layout of `f32`; the caller promises the contents are initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity()) }
}

/// The samples `block` of an `[N, C, h, w]` tensor, channels innermost, `rows × cols`
/// pixels each, `(y, x)` taken from `(y - off, x - off)` and zero outside the image.
fn channels_last(
    t: &[f32],
    [c, h, w]: [usize; 3],
    block: Range<usize>,
    [rows, cols]: [usize; 2],
    off: usize,
) -> Vec<f32> {
    let plane = h * w;
    written(block.len() * rows * cols * c, cols * c, |r, out| {
        let (s, y) = (block.start + r / rows, r % rows);
        let src_y = y.checked_sub(off).filter(|&y| y < h);
        for (x, px) in out.chunks_exact_mut(c).enumerate() {
            match (src_y, x.checked_sub(off).filter(|&x| x < w)) {
                (Some(sy), Some(sx)) => {
                    let at = s * c * plane + sy * w + sx;
                    for (ci, v) in px.iter_mut().enumerate() {
                        v.write(t[at + ci * plane]);
                    }
                }
                _ => {
                    for v in px {
                        v.write(0.0);
                    }
                }
            }
        }
    })
}

/// `Aᵀ M A` of one tile's `m` `[16][c]`, into `out` `[2][2][c]`.
fn output_tile(m: &[f32], c: usize, out: &mut [MaybeUninit<f32>]) {
    for c0 in (0..c).step_by(LANES) {
        let v = |xi: usize| Lanes::load(&m[xi * c + c0..]);
        let y = both(
            std::array::from_fn(|r| std::array::from_fn(|col| v(4 * r + col))),
            at,
        );
        for (p, lanes) in y.as_flattened().iter().enumerate() {
            lanes.store(&mut out[p * c + c0..]);
        }
    }
}

/// Adds `B dV Bᵀ` of one tile's `dv` `[16][c]` onto its 4×4 input pixels in the
/// channels-last `acc`, pixel `(r, col)` at `r * row_len + col * c`.
fn input_grad_tile(dv: &[f32], c: usize, row_len: usize, acc: &mut [f32]) {
    for c0 in (0..c).step_by(LANES) {
        let v = |xi: usize| Lanes::load(&dv[xi * c + c0..]);
        let d = both(
            std::array::from_fn(|r| std::array::from_fn(|col| v(4 * r + col))),
            self::b,
        );
        for (r, row) in d.iter().enumerate() {
            for (col, lanes) in row.iter().enumerate() {
                lanes.add_to(&mut acc[r * row_len + col * c + c0..]);
            }
        }
    }
}

/// `T d Tᵀ` of every `I × I` tile `d` of the samples `block` of an `[N, C, h, w]` tensor
/// `t`, `[tiles][16][C]`: the block is first laid out channels-last on a `grid` of pixels
/// (see [`channels_last`]), tile `(ty, tx)` starting at its pixel `(2ty, 2tx)`.
fn transform_tiles<const I: usize>(
    t: &[f32],
    dims @ [c, ..]: [usize; 3],
    block: Range<usize>,
    tiles: Tiles,
    grid @ [rows, cols]: [usize; 2],
    off: usize,
    transform: impl Fn([Lanes; I]) -> [Lanes; 4] + Sync,
) -> Vec<f32> {
    let samples = block.len();
    let src = channels_last(t, dims, block, grid, off);
    written(
        samples * tiles.per_sample() * 16 * c,
        16 * c,
        |tile, out| {
            let (s, tt) = (tile / tiles.per_sample(), tile % tiles.per_sample());
            let (y0, x0) = (2 * (tt / tiles.cols), 2 * (tt % tiles.cols));
            let origin = ((s * rows + y0) * cols + x0) * c;
            transform_tile(&src[origin..], cols * c, c, &transform, out);
        },
    )
}

/// `T d Tᵀ` of the `I × I` tile of channels-last pixels at the start of `src` (rows
/// `row_len` apart), into `out` `[16][c]`. A function of its own: written inside the
/// parallel loop's closure, the same code made an MTT iteration 5-10% slower here.
fn transform_tile<const I: usize>(
    src: &[f32],
    row_len: usize,
    c: usize,
    transform: &impl Fn([Lanes; I]) -> [Lanes; 4],
    out: &mut [MaybeUninit<f32>],
) {
    for c0 in (0..c).step_by(LANES) {
        let px = |r: usize, col: usize| Lanes::load(&src[r * row_len + col * c + c0..]);
        let v = both(
            std::array::from_fn(|r| std::array::from_fn(|col| px(r, col))),
            transform,
        );
        for (xi, lanes) in v.as_flattened().iter().enumerate() {
            lanes.store(&mut out[xi * c + c0..]);
        }
    }
}

/// `V = Bᵀ d B`, `[tiles][16][Cin]`, of the samples `block` of `x`.
fn transform_input(g: &Geometry, tiles: Tiles, x: &[f32], block: Range<usize>) -> Vec<f32> {
    let dims = [g.cin, g.h, g.w];
    transform_tiles(x, dims, block, tiles, tiles.padded(), 1, bt)
}

/// `dM = A dY Aᵀ`, `[tiles][16][Cout]`, of the samples `block` of `dy` (zero past its
/// edge, to whole tiles).
fn transform_output_grad(g: &Geometry, tiles: Tiles, dy: &[f32], block: Range<usize>) -> Vec<f32> {
    let grid = [2 * tiles.rows, 2 * tiles.cols];
    transform_tiles(dy, [g.cout, g.ho, g.wo], block, tiles, grid, 0, a)
}

/// `U = G g Gᵀ` of the weight `[Cout, Cin, 3, 3]`, laid out `[Cin][16][Cout]`, or
/// `[Cout][16][Cin]` where `by_output` (the input gradient's product reads it so).
fn transform_weight(g: &Geometry, w: &[f32], by_output: bool) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let (outer, inner) = if by_output { (cout, cin) } else { (cin, cout) };
    written(outer * 16 * inner, 16 * inner, |o, out| {
        for i in 0..inner {
            let (co, ci) = if by_output { (o, i) } else { (i, o) };
            let k = &w[(co * cin + ci) * 9..][..9];
            let u = both(
                std::array::from_fn(|r| [k[3 * r], k[3 * r + 1], k[3 * r + 2]]),
                self::g,
            );
            for (xi, &value) in u.as_flattened().iter().enumerate() {
                out[xi * inner + i].write(value);
            }
        }
    })
}

/// `y = conv(x, w) + b`, `[N, Cout, Ho, Wo]`.
pub(super) fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let tiles = Tiles::new(g);
    let (cin, cout) = (g.cin, g.cout);
    let u = transform_weight(g, w, false);
    let mut y = uninit(g.n * g.out_len());
    for block in tiles.blocks(g.n) {
        let len = block.len() * tiles.per_sample();
        let v = transform_input(g, tiles, x, block.clone());
        // M_ξ [Cout, tiles] = U_ξ [Cout, Cin] · V_ξ [Cin, tiles].
        let m = tile_products(&u, &v, cout, cin, len);
        let out = Shared(y[block.start * g.out_len()..].as_mut_ptr().cast());
        let (ho, wo, pixels) = (g.ho, g.wo, g.out_pixels());
        // One task per sample and tile row: Aᵀ M A, plus the bias, into its output rows.
        (0..block.len() * tiles.rows)
            .into_par_iter()
            .for_each(|task| {
                let (s, ty) = (task / tiles.rows, task % tiles.rows);
                let mut yt = uninit(4 * cout);
                for tx in 0..tiles.cols {
                    let t = (s * tiles.rows + ty) * tiles.cols + tx;
                    output_tile(&m[t * 16 * cout..][..16 * cout], cout, &mut yt);
                    for p in 0..4 {
                        let (oy, ox) = (2 * ty + p / 2, 2 * tx + p % 2);
                        if oy >= ho || ox >= wo {
                            continue;
                        }
                        for co in 0..cout {
                            // SAFETY: output_tile wrote all of `yt`.
                            let v = unsafe { yt[p * cout + co].assume_init() };
                            let b = bias.map_or(0.0, |b| b[co]);
                            // SAFETY: (s, co, oy, ox) lies inside this block's output, and only
                            // this task writes output rows 2ty and 2ty + 1.
                            unsafe { *out.at((s * cout + co) * pixels + oy * wo + ox) = v + b };
                        }
                    }
                }
            });
    }
    // SAFETY: every block wrote every pixel of each of its planes (the tiles cover them).
    unsafe { assume_init(y) }
}

/// `(dx, dw)` from the output gradient `dy`, each where its input (`w` for `dx`, `x` for
/// `dw`) is given.
pub(super) fn backward(
    g: &Geometry,
    dy: &[f32],
    x: Option<&[f32]>,
    w: Option<&[f32]>,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let tiles = Tiles::new(g);
    let (cin, cout) = (g.cin, g.cout);
    let ut = w.map(|w| transform_weight(g, w, true));
    let mut dx = uninit(if ut.is_some() { g.n * g.in_len() } else { 0 });
    // dU_ξ, `[Cin][16][Cout]`, written by the first block's products.
    let mut du = uninit(if x.is_some() { cin * 16 * cout } else { 0 });
    for (b_index, block) in tiles.blocks(g.n).enumerate() {
        let len = block.len() * tiles.per_sample();
        let dm = transform_output_grad(g, tiles, dy, block.clone());
        if let Some(x) = x {
            let v = transform_input(g, tiles, x, block.clone());
            // dU_ξ [Cout, Cin] += dM_ξ [Cout, tiles] · V_ξᵀ [tiles, Cin].
            // SAFETY: position ξ writes `[ci][ξ][..Cout]`: disjoint; later blocks add to
            // what the first wrote.
            unsafe {
                products(&mut du, cout, 16 * cout, b_index > 0, |xi| {
                    (
                        col_major(&dm[xi * cout..], cout, len, 16 * cout),
                        Mat::strided(&v[xi * cin..], len, cin, 16 * cin, 1),
                    )
                });
            }
        }
        if let Some(ut) = &ut {
            // dV_ξ [Cin, tiles] = U_ξᵀ [Cin, Cout] · dM_ξ [Cout, tiles].
            let dv = tile_products(ut, &dm, cin, cout, len);
            let out = &mut dx[block.start * g.in_len()..][..block.len() * g.in_len()];
            input_grad(g, tiles, &dv, out);
        }
    }
    // SAFETY: every block wrote each of its planes.
    let dx = ut.map(|_| unsafe { assume_init(dx) });
    let dw = x.map(|_| {
        // SAFETY: the first block's products wrote every element of `du`.
        let du = unsafe { assume_init(du) };
        written(cout * cin * 9, cin * 9, |co, out| {
            for ci in 0..cin {
                let ut = std::array::from_fn(|r| {
                    std::array::from_fn(|c| du[(ci * 16 + 4 * r + c) * cout + co])
                });
                let k = both(ut, gt);
                for (j, &value) in k.as_flattened().iter().enumerate() {
                    out[ci * 9 + j].write(value);
                }
            }
        })
    });
    (dx, dw)
}

/// `dx` of one block, `[samples, Cin, h, w]`, from `dV` `[tiles][16][Cin]`: `B dV Bᵀ` added
/// onto each tile's padded input pixels, channels innermost, then turned back.
fn input_grad(g: &Geometry, tiles: Tiles, dv: &[f32], out: &mut [MaybeUninit<f32>]) {
    let c = g.cin;
    let [ph, pw] = tiles.padded();
    let samples = out.len() / g.in_len();
    let row_len = pw * c;
    let mut acc = vec![0.0f32; samples * ph * row_len];
    // Tile row ty touches padded rows 2ty..2ty+4, which overlap the next row's: even tile
    // rows first, then odd ones, each in parallel.
    for parity in 0..2 {
        let rows: Vec<(usize, usize, &mut [f32])> = acc
            .chunks_mut(ph * row_len)
            .enumerate()
            .flat_map(|(s, sample)| {
                sample[2 * parity * row_len..]
                    .chunks_mut(4 * row_len)
                    .enumerate()
                    .map(move |(i, rows)| (s, 2 * i + parity, rows))
            })
            .filter(|&(_, ty, _)| ty < tiles.rows)
            .collect();
        rows.into_par_iter().for_each(|(s, ty, rows)| {
            for tx in 0..tiles.cols {
                let t = (s * tiles.rows + ty) * tiles.cols + tx;
                let dv = &dv[t * 16 * c..][..16 * c];
                input_grad_tile(dv, c, row_len, &mut rows[2 * tx * c..]);
            }
        });
    }
    // Back to [samples, Cin, h, w], without the padding.
    let plane = g.h * g.w;
    out.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
        let (s, ci) = (p / c, p % c);
        for (y, row) in dst.chunks_exact_mut(g.w).enumerate() {
            let src = &acc[(s * ph + y + 1) * row_len + c + ci..];
            for (x, d) in row.iter_mut().enumerate() {
                d.write(src[x * c]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    /// `x` at `(n, c, y - 1, x - 1)`, zero in the padding.
    fn padded(x: &[f32], [_, c, h, w]: [usize; 4], at: [usize; 4]) -> f64 {
        let [n, ci, y, xx] = at;
        if y == 0 || xx == 0 || y > h || xx > w {
            return 0.0;
        }
        x[((n * c + ci) * h + y - 1) * w + xx - 1] as f64
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() < 2e-5 * scale,
                "{what} [{i}]: {g} vs {w}"
            );
        }
        assert_eq!(got.len(), want.len(), "{what}: length");
    }

    /// Forward, input and weight gradients against float64 sums of their definitions, on
    /// odd and even sizes, a 1×1 image, and a batch of more samples than one block holds.
    #[test]
    #[allow(clippy::needless_range_loop)] // the sums read as their definitions
    fn matches_float64_convolution_and_its_gradients() {
        let mut rng = Rng::new(3);
        for (n, cin, cout, h, w) in [
            (3, 16, 32, 5, 7),
            (2, 32, 16, 8, 8),
            (2, 16, 16, 1, 1),
            (1, 16, 48, 2, 3),
            (2, 20, 24, 5, 6),
            (BLOCK_TILES + 5, 16, 16, 2, 2),
        ] {
            let g = Geometry::new([n, cin, h, w], [cout, cin, 3, 3], 1);
            assert!(applies(&g));
            let case = format!("n {n} cin {cin} cout {cout} {h}x{w}");
            let xd = [n, cin, h, w];
            let x = random(&mut rng, n * cin * h * w);
            let wt = random(&mut rng, cout * cin * 9);
            let bias = random(&mut rng, cout);
            let dy = random(&mut rng, n * cout * h * w);
            let wv = |o: usize, c: usize, ky: usize, kx: usize| {
                wt[((o * cin + c) * 3 + ky) * 3 + kx] as f64
            };
            let dyv = |s: usize, o: usize, y: usize, xx: usize| {
                dy[((s * cout + o) * h + y) * w + xx] as f64
            };

            let mut want_y = Vec::new();
            for s in 0..n {
                for o in 0..cout {
                    for y in 0..h {
                        for xx in 0..w {
                            let mut acc = bias[o] as f64;
                            for c in 0..cin {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        acc += padded(&x, xd, [s, c, y + ky, xx + kx])
                                            * wv(o, c, ky, kx);
                                    }
                                }
                            }
                            want_y.push(acc);
                        }
                    }
                }
            }
            close(
                &forward(&g, &x, &wt, Some(&bias)),
                &want_y,
                &format!("{case}: y"),
            );

            let mut want_dx = Vec::new();
            for s in 0..n {
                for c in 0..cin {
                    for y in 0..h {
                        for xx in 0..w {
                            let mut acc = 0.0;
                            for o in 0..cout {
                                for ky in 0..3 {
                                    for kx in 0..3 {
                                        // Output (y + 1 - ky, xx + 1 - kx) read this pixel.
                                        let (oy, ox) = (y + 1, xx + 1);
                                        if oy >= ky && ox >= kx && oy - ky < h && ox - kx < w {
                                            acc += dyv(s, o, oy - ky, ox - kx) * wv(o, c, ky, kx);
                                        }
                                    }
                                }
                            }
                            want_dx.push(acc);
                        }
                    }
                }
            }
            let mut want_dw = Vec::new();
            for o in 0..cout {
                for c in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut acc = 0.0;
                            for s in 0..n {
                                for y in 0..h {
                                    for xx in 0..w {
                                        acc += dyv(s, o, y, xx)
                                            * padded(&x, xd, [s, c, y + ky, xx + kx]);
                                    }
                                }
                            }
                            want_dw.push(acc);
                        }
                    }
                }
            }
            let (dx, dw) = backward(&g, &dy, Some(&x), Some(&wt));
            close(&dx.unwrap(), &want_dx, &format!("{case}: dx"));
            close(&dw.unwrap(), &want_dw, &format!("{case}: dw"));
            // One gradient at a time: the same values, the other absent.
            let (dx_only, none) = backward(&g, &dy, None, Some(&wt));
            assert!(none.is_none() && dx_only.is_some(), "{case}");
            let (none, dw_only) = backward(&g, &dy, Some(&x), None);
            assert!(none.is_none(), "{case}");
            close(&dw_only.unwrap(), &want_dw, &format!("{case}: dw alone"));
        }
    }

    /// Fewer than 16 channels or counts off a multiple of 4, other kernels and paddings keep
    /// the unfolding path.
    #[test]
    fn applies_only_to_wide_3x3_with_padding_1() {
        assert!(!applies(&Geometry::new([2, 3, 8, 8], [16, 3, 3, 3], 1)));
        assert!(!applies(&Geometry::new([2, 16, 8, 8], [8, 16, 3, 3], 1)));
        assert!(!applies(&Geometry::new([2, 18, 8, 8], [16, 18, 3, 3], 1)));
        assert!(!applies(&Geometry::new([2, 16, 8, 8], [16, 16, 3, 3], 0)));
        assert!(!applies(&Geometry::new([2, 16, 8, 8], [16, 16, 5, 5], 2)));
    }
}
