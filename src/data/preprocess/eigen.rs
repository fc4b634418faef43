//! Symmetric eigen-decomposition in f64 for ZCA whitening.
//!
//! ZCA needs every eigenpair of a D x D covariance (D = 3072 for CIFAR), so the route is the
//! classic O(D^3) one: Householder reduction to tridiagonal form, then implicit QL with
//! Wilkinson shifts. The costs are memory traffic, not arithmetic, so:
//! - each Householder step makes a single pass over the trailing block, one row at a time
//!   (it finishes the previous step's rank-2 update and does this step's product together);
//! - `Q^T` is built by right-multiplying reflectors, which touches each row independently;
//! - QL rotations are recorded for a batch of sweeps and then applied to narrow column blocks
//!   of the eigenvector rows as a wavefront, so the rows in use stay in L1 cache.
//!
//! Rows are independent in every pass, so large passes are split across threads.

use std::thread;

/// Eigenvalues and orthonormal eigenvectors of a symmetric matrix, largest eigenvalue first.
#[derive(Clone, Debug)]
pub struct SymEigen {
    /// Eigenvalues, in decreasing order.
    pub values: Vec<f64>,
    /// Eigenvectors as the rows of an `n x n` row-major matrix: row `i` belongs to `values[i]`.
    pub vectors: Vec<f64>,
}

/// Most QL sweeps spent on one eigenvalue before giving up (about two are usual).
const MAX_SWEEPS_PER_VALUE: usize = 60;
/// QL sweeps recorded before their rotations are applied to the eigenvectors.
const SWEEPS_PER_BATCH: usize = 32;
/// Eigenvector columns per cache block when applying rotations (64 f64 = 512 bytes a row).
const COLUMN_BLOCK: usize = 64;
/// Householder reflectors applied to a row of `Q^T` while it stays in cache.
const REFLECTOR_BLOCK: usize = 16;
/// Passes over fewer numbers than this run on one thread (spawning costs more).
const PARALLEL_MIN: usize = 1 << 18;

/// Decomposes the symmetric `n x n` row-major matrix `a`; only its lower triangle is read.
///
/// Errors name the problem instead of panicking: wrong length, a non-finite entry, or (in
/// theory) a QL iteration that does not converge.
pub fn sym_eigen(a: Vec<f64>, n: usize) -> Result<SymEigen, String> {
    let threads = thread::available_parallelism().map_or(1, |p| p.get());
    sym_eigen_threads(a, n, threads)
}

/// [`sym_eigen`] with an explicit thread count (1 = serial).
pub fn sym_eigen_threads(mut a: Vec<f64>, n: usize, threads: usize) -> Result<SymEigen, String> {
    if a.len() != n * n {
        return Err(format!(
            "eigen-decomposition: expected {n}x{n} = {} numbers, found {}",
            n * n,
            a.len()
        ));
    }
    if let Some(i) = (0..n * n).find(|&i| i % n <= i / n && !a[i].is_finite()) {
        return Err(format!(
            "eigen-decomposition: entry ({}, {}) is {}",
            i / n,
            i % n,
            a[i]
        ));
    }
    let threads = threads.max(1);
    // Mirror the lower triangle so that every pass can stream whole rows.
    for i in 0..n {
        for j in 0..i {
            a[j * n + i] = a[i * n + j];
        }
    }
    let (mut d, mut e, betas) = tridiagonalize(&mut a, n, threads);
    let mut w = reflectors_transposed(&a, &betas, n, threads);
    drop(a);
    tridiagonal_ql(&mut d, &mut e, &mut w, n, threads)?;

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    let values = order.iter().map(|&i| d[i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (dst, &src) in vectors.chunks_exact_mut(n.max(1)).zip(&order) {
        dst.copy_from_slice(&w[src * n..(src + 1) * n]);
    }
    Ok(SymEigen { values, vectors })
}

/// Householder reduction `A = Q T Q^T` of a full symmetric matrix, in place.
///
/// Returns the diagonal `d` and sub-diagonal `e` of `T` (`e[i]` couples `i` and `i + 1`,
/// `e[n - 1] = 0`) and the reflector scales `beta`; reflector `k` is `I - beta_k v v^T` with
/// `v` stored in row `k`, columns `k + 1..n`.
fn tridiagonalize(a: &mut [f64], n: usize, threads: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut e = vec![0.0; n];
    let mut betas = vec![0.0; n];
    let mut p = vec![0.0; n];
    // The rank-2 update `B -= v w^T + w v^T` of the previous step, not yet applied to the
    // rows below the current one: (first index of the block, v, w).
    let mut pending: Option<(usize, Vec<f64>, Vec<f64>)> = None;
    let rank2 = |row: &mut [f64], i: usize, (start, v, w): &(usize, Vec<f64>, Vec<f64>)| {
        // `row` holds columns `start..n` of row `i`.
        let (vi, wi) = (v[i - start], w[i - start]);
        for ((r, vj), wj) in row.iter_mut().zip(v.iter()).zip(w.iter()) {
            *r -= vi * wj + wi * vj;
        }
    };
    for k in 0..n.saturating_sub(2) {
        let m = n - k - 1;
        let (head, tail) = a.split_at_mut((k + 1) * n);
        let row_k = &mut head[k * n..];
        if let Some(pend) = &pending {
            rank2(&mut row_k[pend.0..], k, pend);
        }
        // The reflector for column k; by symmetry that is the tail of row k.
        let v = &mut row_k[k + 1..];
        let scale = v.iter().fold(0.0f64, |s, x| s.max(x.abs()));
        let beta = if scale == 0.0 {
            e[k] = 0.0;
            0.0
        } else {
            let norm = scale * v.iter().map(|x| (x / scale).powi(2)).sum::<f64>().sqrt();
            let alpha = if v[0] > 0.0 { -norm } else { norm };
            // v = x - alpha e1 maps x to alpha e1 under I - beta v v^T.
            let beta = 1.0 / (norm * (norm + v[0].abs()));
            v[0] -= alpha;
            e[k] = alpha;
            beta
        };
        betas[k] = beta;
        let v: &[f64] = v;

        // One pass over rows k+1..n: finish the pending update, then p = beta B v.
        let p = &mut p[..m];
        let pend = pending.as_ref();
        par_rows(tail, n, p, threads, |i, row, out| {
            let i = k + 1 + i;
            if let Some(pend) = pend {
                rank2(&mut row[pend.0..], i, pend);
            }
            *out = beta * dot(&row[k + 1..], v);
        });
        if beta == 0.0 {
            pending = None;
            continue;
        }
        // w = p - (beta/2)(v.p) v gives H B H = B - v w^T - w v^T.
        let half = 0.5 * beta * dot(v, p);
        let w: Vec<f64> = p.iter().zip(v).map(|(pi, vi)| pi - half * vi).collect();
        pending = Some((k + 1, v.to_vec(), w));
    }
    // The last 2x2 block still owes the final update.
    if let Some(pend) = &pending {
        for i in pend.0..n {
            rank2(&mut a[i * n + pend.0..(i + 1) * n], i, pend);
        }
    }
    let d = (0..n).map(|i| a[i * n + i]).collect();
    if n >= 2 {
        e[n - 2] = a[(n - 2) * n + n - 1];
    }
    (d, e, betas)
}

/// `Q^T = H_{n-3} ... H_1 H_0` for the reflectors stored by [`tridiagonalize`].
///
/// Built as `M <- M H_k` for decreasing k, starting from the identity. Each row of `M` is
/// updated on its own (a dot product and an axpy per reflector), so a row takes a whole block
/// of reflectors while it sits in L1 cache; rows above the block are still identity rows.
fn reflectors_transposed(a: &[f64], betas: &[f64], n: usize, threads: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    let mut unused = vec![0.0; n];
    let mut hi = n.saturating_sub(2);
    while hi > 0 {
        let lo = hi.saturating_sub(REFLECTOR_BLOCK);
        let rows = &mut m[(lo + 1) * n..];
        let out = &mut unused[..n - lo - 1];
        par_rows(rows, n, out, threads, |_, row, _| {
            for k in (lo..hi).rev() {
                let v = &a[k * n + k + 1..(k + 1) * n];
                let row = &mut row[k + 1..];
                let s = betas[k] * dot(row, v);
                if s != 0.0 {
                    for (r, vj) in row.iter_mut().zip(v) {
                        *r -= s * vj;
                    }
                }
            }
        });
        hi = lo;
    }
    m
}

/// Implicit QL with Wilkinson shifts on the tridiagonal `(d, e)`; every rotation is also
/// applied to the rows of `w`, which start as `Q^T` and end as the eigenvectors.
fn tridiagonal_ql(
    d: &mut [f64],
    e: &mut [f64],
    w: &mut [f64],
    n: usize,
    threads: usize,
) -> Result<(), String> {
    // Off-diagonals below eps * ||T|| count as zero (the backward-stable criterion).
    let norm = (0..n).fold(0.0f64, |s, i| s.max(d[i].abs() + e[i].abs()));
    let tiny = f64::EPSILON * norm;
    let mut batch = RotationBatch::default();
    for l in 0..n {
        let mut sweeps = 0;
        loop {
            let m = (l..n)
                .find(|&m| m + 1 == n || e[m].abs() <= tiny)
                .unwrap_or(n - 1);
            if m == l {
                break;
            }
            sweeps += 1;
            if sweeps > MAX_SWEEPS_PER_VALUE {
                return Err(format!(
                    "eigen-decomposition: QL did not converge for eigenvalue {l} of {n}"
                ));
            }
            // The wavefront needs sweeps whose first row never rises within a batch.
            if batch.sweeps.len() == SWEEPS_PER_BATCH || batch.top() < Some(m - 1) {
                batch.apply(w, n, threads);
            }
            batch.begin(m - 1);
            // Wilkinson shift from the leading 2x2 block.
            let g0 = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut g = d[m] - d[l] + e[l] / (g0 + g0.hypot(1.0).copysign(g0));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut split = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                let r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    // Underflow: the matrix split at i; start again on the smaller part.
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    split = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                let r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                batch.push(c, s);
            }
            if !split {
                d[l] -= p;
                e[l] = g;
                e[m] = 0.0;
            }
        }
    }
    batch.apply(w, n, threads);
    Ok(())
}

/// Rotations of consecutive QL sweeps, kept until they are applied together.
///
/// Sweep `t` rotates rows `(top_t - j, top_t - j + 1)` for its j-th rotation `(c, s)`.
#[derive(Default)]
struct RotationBatch {
    /// (top row, first index into `cs`, count) per sweep.
    sweeps: Vec<(usize, usize, usize)>,
    cs: Vec<(f64, f64)>,
}

impl RotationBatch {
    fn top(&self) -> Option<usize> {
        self.sweeps.last().map(|s| s.0)
    }

    fn begin(&mut self, top: usize) {
        self.sweeps.push((top, self.cs.len(), 0));
    }

    fn push(&mut self, c: f64, s: f64) {
        self.cs.push((c, s));
        if let Some(last) = self.sweeps.last_mut() {
            last.2 += 1;
        }
    }

    /// Applies all recorded rotations, in order, to the rows of `w`, then forgets them.
    fn apply(&mut self, w: &mut [f64], n: usize, threads: usize) {
        if self.cs.is_empty() {
            self.sweeps.clear();
            return;
        }
        let blocks = n.div_ceil(COLUMN_BLOCK);
        let threads = if self.cs.len() * n < PARALLEL_MIN {
            1
        } else {
            threads.min(blocks)
        };
        let width = blocks.div_ceil(threads) * COLUMN_BLOCK;
        let shared = SharedRows {
            ptr: w.as_mut_ptr(),
            n,
        };
        let this = &*self;
        let run = |lo: usize, hi: usize| {
            for start in (lo..hi).step_by(COLUMN_BLOCK) {
                // SAFETY: every caller owns a disjoint column range [lo, hi).
                unsafe { this.wavefront(&shared, start, (start + COLUMN_BLOCK).min(hi)) };
            }
        };
        if threads <= 1 {
            run(0, n);
        } else {
            thread::scope(|scope| {
                for t in 0..threads {
                    let (lo, hi) = ((t * width).min(n), ((t + 1) * width).min(n));
                    let run = &run;
                    scope.spawn(move || run(lo, hi));
                }
            });
        }
        self.sweeps.clear();
        self.cs.clear();
    }

    /// Applies the batch to columns `start..end`, letting sweep t+1 follow sweep t two rows
    /// behind. That order is exact: rotations on disjoint row pairs commute, and sweep t+1
    /// only touches rows that sweep t has finished with.
    ///
    /// # Safety
    /// No other thread may access columns `start..end` of `w` meanwhile.
    unsafe fn wavefront(&self, w: &SharedRows, start: usize, end: usize) {
        let mut done = vec![0usize; self.sweeps.len()];
        loop {
            let mut busy = false;
            for t in 0..self.sweeps.len() {
                let (top, first, count) = self.sweeps[t];
                if done[t] == count {
                    continue;
                }
                busy = true;
                let i = top - done[t];
                if t > 0 {
                    let (prev_top, _, prev_count) = self.sweeps[t - 1];
                    // The previous sweep must be past rows i+1 and i (next row <= i - 2).
                    if done[t - 1] < prev_count && prev_top - done[t - 1] + 2 > i {
                        continue;
                    }
                }
                let (c, s) = self.cs[first + done[t]];
                // SAFETY: i + 1 <= top + 1 < n and the caller owns these columns.
                let (x, y) = unsafe { w.row_pair(i, start, end) };
                for (x, y) in x.iter_mut().zip(y.iter_mut()) {
                    let f = *y;
                    *y = s * *x + c * f;
                    *x = c * *x - s * f;
                }
                done[t] += 1;
            }
            if !busy {
                return;
            }
        }
    }
}

/// A row-major `n x n` matrix shared by threads that own disjoint column ranges.
struct SharedRows {
    ptr: *mut f64,
    n: usize,
}

// SAFETY: only `RotationBatch::apply` shares it, giving each thread its own columns.
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// Columns `start..end` of rows `i` and `i + 1`.
    ///
    /// # Safety
    /// `i + 1 < n`, `start <= end <= n`, and nothing else accesses these elements meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_pair(&self, i: usize, start: usize, end: usize) -> (&mut [f64], &mut [f64]) {
        let len = end - start;
        // SAFETY: in bounds by the contract; the two rows do not overlap.
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.ptr.add(i * self.n + start), len),
                std::slice::from_raw_parts_mut(self.ptr.add((i + 1) * self.n + start), len),
            )
        }
    }
}

/// Dot product with four accumulators, so that the loop vectorises.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    let split = len - len % 4;
    let mut acc = [0.0f64; 4];
    for (x, y) in a[..split].chunks_exact(4).zip(b[..split].chunks_exact(4)) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = a[split..len]
        .iter()
        .zip(&b[split..len])
        .map(|(x, y)| x * y)
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Runs `f(i, row i, &mut out[i])` for the first `out.len()` rows of `rows` (row length
/// `n`), split into contiguous chunks across threads when the pass is large.
fn par_rows(
    rows: &mut [f64],
    n: usize,
    out: &mut [f64],
    threads: usize,
    f: impl Fn(usize, &mut [f64], &mut f64) + Sync,
) {
    let count = out.len().min(rows.len() / n.max(1));
    let threads = if count * count < PARALLEL_MIN {
        1
    } else {
        threads.min(count)
    };
    if threads <= 1 {
        for (i, (row, o)) in rows.chunks_exact_mut(n).zip(out.iter_mut()).enumerate() {
            f(i, row, o);
        }
        return;
    }
    let per = count.div_ceil(threads);
    thread::scope(|scope| {
        let chunks = rows[..count * n]
            .chunks_mut(per * n)
            .zip(out.chunks_mut(per));
        for (t, (rows, out)) in chunks.enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (i, (row, o)) in rows.chunks_exact_mut(n).zip(out.iter_mut()).enumerate() {
                    f(t * per + i, row, o);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic numbers in [-0.5, 0.5) from the crate's seeded generator.
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut rng = crate::rng::Rng::new(seed);
        move || rng.uniform() as f64 - 0.5
    }

    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let mut rnd = noise(seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = rnd();
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        a
    }

    /// Largest |A - V^T diag(w) V| and |V V^T - I|, computed in f64.
    fn residuals(a: &[f64], eig: &SymEigen, n: usize) -> (f64, f64) {
        let v = &eig.vectors;
        let (mut rec, mut orth) = (0.0f64, 0.0f64);
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| v[k * n + i] * eig.values[k] * v[k * n + j])
                    .sum();
                rec = rec.max((r - a[i * n + j]).abs());
                let o: f64 = (0..n).map(|k| v[i * n + k] * v[j * n + k]).sum();
                orth = orth.max((o - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        (rec, orth)
    }

    /// `expected` equals `got` up to the sign an eigenvector is free to take.
    fn same_direction(got: &[f64], expected: &[f64]) -> bool {
        let dot: f64 = got.iter().zip(expected).map(|(a, b)| a * b).sum();
        got.iter()
            .zip(expected)
            .all(|(g, e)| (g - dot.signum() * e).abs() < 1e-12)
    }

    #[test]
    fn hand_checked_small_matrices() {
        // [[2,1],[1,2]]: eigenvalues 3 and 1 with vectors (1,1)/sqrt2 and (1,-1)/sqrt2.
        let eig = sym_eigen(vec![2.0, 1.0, 1.0, 2.0], 2).unwrap();
        let h = 0.5f64.sqrt();
        assert!((eig.values[0] - 3.0).abs() < 1e-14 && (eig.values[1] - 1.0).abs() < 1e-14);
        assert!(same_direction(&eig.vectors[0..2], &[h, h]));
        assert!(same_direction(&eig.vectors[2..4], &[h, -h]));

        // The 1-D Laplacian tridiag(-1, 2, -1): eigenvalues 2 + sqrt2, 2, 2 - sqrt2 with
        // vectors (1, -sqrt2, 1)/2, (1, 0, -1)/sqrt2, (1, sqrt2, 1)/2.
        let a = vec![2.0, -1.0, 0.0, -1.0, 2.0, -1.0, 0.0, -1.0, 2.0];
        let eig = sym_eigen(a, 3).unwrap();
        let s = 2f64.sqrt();
        for (got, want) in eig.values.iter().zip([2.0 + s, 2.0, 2.0 - s]) {
            assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        }
        assert!(same_direction(&eig.vectors[0..3], &[0.5, -s / 2.0, 0.5]));
        assert!(same_direction(&eig.vectors[3..6], &[h, 0.0, -h]));
        assert!(same_direction(&eig.vectors[6..9], &[0.5, s / 2.0, 0.5]));

        // Only the lower triangle is read.
        let lower = vec![2.0, 99.0, 1.0, 2.0];
        assert_eq!(
            sym_eigen(lower, 2).unwrap().values,
            eig_values(&[2.0, 1.0, 1.0, 2.0])
        );

        // Trivial sizes and a diagonal matrix with a repeated eigenvalue.
        assert!(sym_eigen(vec![], 0).unwrap().values.is_empty());
        assert_eq!(sym_eigen(vec![-4.0], 1).unwrap().vectors, [1.0]);
        let eig = sym_eigen(vec![1.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 1.0], 3).unwrap();
        assert_eq!(eig.values, [5.0, 1.0, 1.0]);
    }

    fn eig_values(a: &[f64]) -> Vec<f64> {
        sym_eigen(a.to_vec(), 2).unwrap().values
    }

    #[test]
    fn random_symmetric_50_reconstructs() {
        let n = 50;
        let a = random_symmetric(n, 7);
        let eig = sym_eigen(a.clone(), n).unwrap();
        let (rec, orth) = residuals(&a, &eig, n);
        assert!(rec < 1e-13, "reconstruction error {rec}");
        assert!(orth < 1e-13, "orthogonality error {orth}");
        assert!(eig.values.windows(2).all(|w| w[0] >= w[1]));
        let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
        assert!((eig.values.iter().sum::<f64>() - trace).abs() < 1e-12);
    }

    #[test]
    fn rank_deficient_covariance_reconstructs() {
        // 10 samples in 60 dimensions: 50 eigenvalues are (numerically) zero, like a
        // covariance fitted on fewer images than pixels.
        let (n, samples) = (60, 10);
        let mut rnd = noise(3);
        let x: Vec<f64> = (0..samples * n).map(|_| rnd()).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..samples).map(|s| x[s * n + i] * x[s * n + j]).sum();
            }
        }
        let eig = sym_eigen(a.clone(), n).unwrap();
        let (rec, orth) = residuals(&a, &eig, n);
        assert!(rec < 1e-13 && orth < 1e-13, "{rec} {orth}");
        assert!(eig.values[samples..].iter().all(|v| v.abs() < 1e-13));
        assert!(eig.values[samples - 1] > 1e-3);
    }

    #[test]
    fn threads_give_identical_results() {
        // Large enough for every parallel path; each number is computed the same way.
        let n = 600;
        let a = random_symmetric(n, 11);
        let serial = sym_eigen_threads(a.clone(), n, 1).unwrap();
        let parallel = sym_eigen_threads(a.clone(), n, 3).unwrap();
        assert_eq!(serial.values, parallel.values);
        assert_eq!(serial.vectors, parallel.vectors);
        // Spot-check A v = w v for a few pairs.
        for k in [0, 1, 299, 598, 599] {
            let v = &serial.vectors[k * n..(k + 1) * n];
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * v[j]).sum();
                assert!((av - serial.values[k] * v[i]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(sym_eigen(vec![1.0; 5], 2).is_err());
        let err = sym_eigen(vec![1.0, 0.0, f64::NAN, 1.0], 2).unwrap_err();
        assert!(err.contains("(1, 0)"), "{err}");
    }

    /// `cargo test --release --lib eigen_3072 -- --ignored --nocapture`
    #[test]
    #[ignore = "timing: about half a minute in release"]
    fn eigen_3072_timing() {
        let n = 3072;
        let a = random_symmetric(n, 5);
        let start = std::time::Instant::now();
        let eig = sym_eigen(a.clone(), n).unwrap();
        println!(
            "3072x3072 eigen-decomposition: {:.1} s",
            start.elapsed().as_secs_f64()
        );
        for k in [0, n / 2, n - 1] {
            let v = &eig.vectors[k * n..(k + 1) * n];
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * v[j]).sum();
                assert!((av - eig.values[k] * v[i]).abs() < 1e-11);
            }
        }
    }
}
