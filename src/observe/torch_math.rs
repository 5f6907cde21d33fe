//! PyTorch CPU kernels whose `f32` rounding the histogram observer's results depend on,
//! reproduced operation for operation (x86-64 builds, which run these kernels with AVX2 vectors
//! of 8 floats; the AVX-512 variants are registered only for a few other kernels).

/// Floats per AVX2 vector (`Vectorized<float>::size()`).
const VEC: usize = 8;

/// ATen's `internal::GRAIN_SIZE`: ranges longer than this are split across threads.
const GRAIN_SIZE: usize = 32768;

/// `torch.sum` of a contiguous `float32` vector: ATen's `cascade_sum` (`SumKernel.cpp`), which
/// sums vectors of 8 lanes in 4 interleaved rows with a 4-level cascade of accumulators, then
/// adds the tail and the lanes in order, all in `f32`.
pub(crate) fn sum(values: &[f32]) -> f32 {
    if values.len() < VEC {
        return row_sum::<1>(values)[0];
    }
    let vectors = values.len() / VEC;
    let lanes = row_sum::<VEC>(&values[..vectors * VEC]);
    let tail = values[vectors * VEC..]
        .iter()
        .fold(0.0f32, |acc, &v| acc + v);
    lanes.iter().fold(tail, |acc, &lane| acc + lane)
}

/// ATen's `row_sum` over elements of `L` lanes (`L = 1`: scalars): `multi_row_sum` over rows of
/// 4 elements, the leftover elements into row 0, then rows 1..4 into row 0.
fn row_sum<const L: usize>(values: &[f32]) -> [f32; L] {
    const ROWS: usize = 4;
    let element = |i: usize| -> [f32; L] { std::array::from_fn(|k| values[i * L + k]) };
    let size = values.len() / L;
    let size_rows = size / ROWS;
    let mut partial = multi_row_sum::<L, ROWS>(size_rows, |row, k| element(row * ROWS + k));
    for i in size_rows * ROWS..size {
        add_to(&mut partial[0], element(i));
    }
    for k in 1..ROWS {
        let row = partial[k];
        add_to(&mut partial[0], row);
    }
    partial[0]
}

/// ATen's `multi_row_sum`: `size` rows of `R` elements summed column-wise through 4 levels of
/// accumulators, each level absorbing the one below every `2^level_power` rows.
fn multi_row_sum<const L: usize, const R: usize>(
    size: usize,
    load: impl Fn(usize, usize) -> [f32; L],
) -> [[f32; L]; R] {
    const LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / LEVELS as u32);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; L]; R]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, column) in acc[0].iter_mut().enumerate() {
                add_to(column, load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (below, column) in lower[j - 1].iter_mut().zip(&mut upper[0]) {
                add_to(column, std::mem::replace(below, [0.0; L]));
            }
            if i & (level_mask << (j as u32 * level_power)) != 0 {
                break;
            }
        }
    }
    for row in i..size {
        for (k, column) in acc[0].iter_mut().enumerate() {
            add_to(column, load(row, k));
        }
    }
    let (first, higher) = acc.split_at_mut(1);
    for level in higher {
        for (column, above) in first[0].iter_mut().zip(level) {
            add_to(column, *above);
        }
    }
    acc[0]
}

fn add_to<const L: usize>(acc: &mut [f32; L], values: [f32; L]) {
    for (a, v) in acc.iter_mut().zip(values) {
        *a += v;
    }
}

/// c10's `CeilLog2`: 1 for x ≤ 2, else ⌈log2 x⌉.
fn ceil_log2(x: usize) -> u32 {
    if x <= 2 {
        1
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

/// `torch.cumsum` of a `float32` vector on CPU: a `double` accumulator, each prefix rounded to
/// `f32`.
pub(crate) fn cumsum(values: &[f32]) -> Vec<f32> {
    let mut acc = 0.0f64;
    values
        .iter()
        .map(|&v| {
            acc += f64::from(v);
            acc as f32
        })
        .collect()
}

/// `torch.div(a, b, rounding_mode="floor")` for floats: c10's `div_floor_floating`.
pub(crate) fn div_floor(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let modulo = a % b;
    let mut div = (a - modulo) / b;
    if modulo != 0.0 && (b < 0.0) != (modulo < 0.0) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0f32.copysign(a / b);
    }
    let floor = div.floor();
    if div - floor > 0.5 {
        floor + 1.0
    } else {
        floor
    }
}

/// `torch.linspace(start, end, steps)` in `float32` on CPU (`RangeFactoriesKernel.cpp`), as
/// computed with at least two threads.
///
/// Element `i` is `start + step·i` below the halfway index and `end − step·(steps − i − 1)` from
/// it, except that the vectorised loop computes each pair of 8-float vectors from its first
/// index as `base + k·step`; the range is split across threads when longer than the grain size,
/// each thread vectorising from the start of its chunk and finishing its tail one element at a
/// time.
pub(crate) struct Linspace {
    start: f32,
    end: f32,
    step: f32,
    steps: usize,
    halfway: usize,
    /// Start and end of each thread's chunk.
    chunks: Vec<(usize, usize)>,
}

impl Linspace {
    pub(crate) fn new(start: f32, end: f32, steps: usize) -> Self {
        debug_assert!(steps >= 2);
        let step = (end - start) / (steps - 1) as f32;
        // at::parallel_for (OpenMP): min(threads, ⌈steps / grain⌉) tasks of ⌈steps / tasks⌉.
        let tasks = steps.div_ceil(GRAIN_SIZE);
        let chunk = steps.div_ceil(tasks);
        let chunks = (0..tasks)
            .map(|t| (t * chunk, ((t + 1) * chunk).min(steps)))
            .collect();
        Linspace {
            start,
            end,
            step,
            steps,
            halfway: steps / 2,
            chunks,
        }
    }

    /// The scalar formula at index `i`, plus `k` steps (the vector lane offset).
    fn lane_value(&self, i: usize, k: usize) -> f32 {
        let base = if i < self.halfway {
            self.start + self.step * i as f32
        } else {
            self.end - self.step * (self.steps - i - 1) as f32
        };
        if k == 0 {
            base
        } else {
            base + k as f32 * self.step
        }
    }

    /// Element `i`.
    pub(crate) fn at(&self, i: usize) -> f32 {
        let &(begin, end) = self
            .chunks
            .iter()
            .find(|&&(_, end)| i < end)
            .expect("index in range");
        let offset = i - begin;
        let vectorised = (end - begin) / (2 * VEC) * (2 * VEC);
        if offset < vectorised {
            let lane = offset % VEC;
            self.lane_value(i - lane, lane)
        } else {
            self.lane_value(i, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_is_exact_on_integers_and_close_on_fractions() {
        let integers: Vec<f32> = (0..2048).map(|i| (i % 7) as f32).collect();
        assert_eq!(
            sum(&integers),
            integers.iter().map(|&v| f64::from(v)).sum::<f64>() as f32
        );
        let fractions: Vec<f32> = (0..2049).map(|i| 1.0 / (1.0 + i as f32)).collect();
        let exact: f64 = fractions.iter().map(|&v| f64::from(v)).sum();
        assert!((f64::from(sum(&fractions)) - exact).abs() < 1e-5);
        assert_eq!(sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    #[test]
    fn ceil_log2_matches_c10() {
        assert_eq!(
            [1, 2, 3, 4, 5, 32, 33].map(ceil_log2),
            [1, 1, 2, 2, 3, 5, 6]
        );
    }

    #[test]
    fn div_floor_rounds_down() {
        assert_eq!(div_floor(7.0, 2.0), 3.0);
        assert_eq!(div_floor(-7.0, 2.0), -4.0);
        assert_eq!(div_floor(6.0, 2.0), 3.0);
        assert_eq!(div_floor(0.0, 2.0), 0.0);
    }

    #[test]
    fn linspace_hits_both_ends() {
        for steps in [2, 17, 2049, 32769] {
            let space = Linspace::new(-1.5, 2.25, steps);
            assert_eq!(space.at(0), -1.5);
            assert_eq!(space.at(steps - 1), 2.25);
            let mid = space.at(steps / 2);
            let expected = -1.5 + 3.75 * (steps / 2) as f32 / (steps - 1) as f32;
            assert!((mid - expected).abs() < 1e-5, "{steps}: {mid}");
        }
    }
}
