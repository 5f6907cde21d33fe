//! A scalar model of the AMX tile unit (palette 1), so the AMX kernel runs on any CPU.
//!
//! The model keeps eight tiles of 16 rows × 64 bytes and the shape of each from the loaded
//! configuration. It checks what the hardware checks and panics where the hardware faults: a
//! bad configuration (#GP), an instruction before `ldtilecfg` or on an unconfigured tile, and
//! `tdpbusd` with repeated registers or mismatched shapes (#UD). Loads and stores touch only
//! the configured `rows × colsb` bytes; a load zeroes the rest of the tile, as the hardware
//! does.

use super::Tile;
use super::tile_unit::{MAX_COLSB, MAX_ROWS, TILES, TileConfig, TileUnit};
use crate::kernels::params::requantize_parts;

/// The emulated tile registers and their configured shapes.
pub(crate) struct Emulated {
    /// `(rows, colsb)` per tile once a configuration is loaded.
    shapes: Option<[(usize, usize); TILES]>,
    data: [[[u8; MAX_COLSB]; MAX_ROWS]; TILES],
}

impl Emulated {
    /// An unconfigured unit (as after `tilerelease`).
    pub(crate) fn new() -> Self {
        Emulated {
            shapes: None,
            data: [[[0; MAX_COLSB]; MAX_ROWS]; TILES],
        }
    }

    /// The configured `(rows, colsb)` of tile `t`; panics (#UD) if it is not configured.
    fn shape(&self, t: u8) -> (usize, usize) {
        let shapes = self.shapes.expect("#UD: tile instruction before ldtilecfg");
        let shape = shapes[usize::from(t)];
        assert!(shape.0 > 0, "#UD: tmm{t} is not configured");
        shape
    }
}

/// The `(rows, colsb)` of each tile of a palette-1 `config`; panics (#GP) where `ldtilecfg`
/// would fault.
fn checked_shapes(config: &TileConfig) -> [(usize, usize); TILES] {
    assert_eq!(config.palette, 1, "#GP: only palette 1 is modelled");
    assert_eq!(config.start_row, 0, "#GP: no interrupted load to restart");
    assert!(
        config.reserved.iter().all(|&b| b == 0),
        "#GP: reserved bytes set"
    );
    assert!(
        config.colsb[TILES..].iter().all(|&c| c == 0)
            && config.rows[TILES..].iter().all(|&r| r == 0),
        "#GP: palette 1 has {TILES} tiles"
    );
    std::array::from_fn(|t| {
        let (rows, colsb) = (usize::from(config.rows[t]), usize::from(config.colsb[t]));
        assert!(
            rows <= MAX_ROWS && colsb <= MAX_COLSB,
            "#GP: tmm{t} is {rows} × {colsb}"
        );
        assert_eq!(rows == 0, colsb == 0, "#GP: tmm{t} is {rows} × {colsb}");
        (rows, colsb)
    })
}

impl TileUnit for Emulated {
    unsafe fn load_config(&mut self, config: &TileConfig) {
        self.shapes = Some(checked_shapes(config));
        self.data = [[[0; MAX_COLSB]; MAX_ROWS]; TILES];
    }

    unsafe fn zero<const T: u8>(&mut self) {
        self.shape(T);
        self.data[usize::from(T)] = [[0; MAX_COLSB]; MAX_ROWS];
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        let tile = &mut self.data[usize::from(T)];
        *tile = [[0; MAX_COLSB]; MAX_ROWS];
        for (r, row) in tile.iter_mut().enumerate().take(rows) {
            // SAFETY: the caller guarantees that every configured row is readable.
            let src = unsafe { std::slice::from_raw_parts(base.wrapping_add(r * stride), colsb) };
            row[..colsb].copy_from_slice(src);
        }
    }

    unsafe fn dpbusd<const C: u8, const A: u8, const B: u8>(&mut self) {
        assert!(
            C != A && C != B && A != B,
            "#UD: tdpbusd tmm{C}, tmm{A}, tmm{B}"
        );
        let ((m, n4), (a_rows, k4), (b_rows, b_colsb)) =
            (self.shape(C), self.shape(A), self.shape(B));
        assert!(
            a_rows == m && k4 / 4 == b_rows && b_colsb == n4,
            "#UD: tdpbusd shapes C {m}×{n4}, A {a_rows}×{k4}, B {b_rows}×{b_colsb}"
        );
        let (a, b) = (self.data[usize::from(A)], self.data[usize::from(B)]);
        let c = &mut self.data[usize::from(C)];
        for (c_row, a_row) in c.iter_mut().zip(&a).take(m) {
            for j in 0..n4 / 4 {
                let dot = (0..k4 / 4).fold(0i32, |acc, k| {
                    (0..4).fold(acc, |acc, q| {
                        let x = i32::from(a_row[4 * k + q]) * i32::from(b[k][4 * j + q] as i8);
                        acc.wrapping_add(x)
                    })
                });
                let old = i32::from_ne_bytes(c_row[4 * j..][..4].try_into().expect("4 bytes"));
                c_row[4 * j..][..4].copy_from_slice(&old.wrapping_add(dot).to_ne_bytes());
            }
        }
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for (r, row) in self.data[usize::from(T)].iter().enumerate().take(rows) {
            // SAFETY: the caller guarantees that every configured row is writable.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(base.wrapping_add(r * stride), colsb) };
            dst.copy_from_slice(&row[..colsb]);
        }
    }

    unsafe fn release(&mut self) {
        *self = Emulated::new();
    }

    unsafe fn requant_store(&self, acc: &[i32; 16], t: &Tile, row: usize, col: usize, n: usize) {
        for (j, &acc) in acc.iter().enumerate().take(n) {
            let out = t.out_at(row, col + j);
            // SAFETY: the caller guarantees `col + 16` multipliers and `n` writable elements.
            unsafe {
                if t.raw {
                    out.cast::<i32>().write_unaligned(acc);
                } else {
                    let multiplier = *t.multipliers.add(col + j);
                    *out = requantize_parts(acc, multiplier, t.zero_point, t.lo, t.hi);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×8-byte A, a 2×8-byte B and a 2×8-byte C (two `i32` columns, `K` = 2 groups).
    fn small_config() -> TileConfig {
        let mut config = TileConfig::uniform(0, 0);
        config.rows[..3].copy_from_slice(&[2; 3]);
        config.colsb[..3].copy_from_slice(&[8; 3]);
        config
    }

    #[test]
    fn dpbusd_is_u8_times_i8_dot_products_of_four_wrapping() {
        let mut unit = Emulated::new();
        let a: [u8; 16] = [255, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 255, 255, 255, 255];
        let b: [i8; 16] = [
            -128, 1, 1, 1, 2, 2, 2, 2, 1, -1, 1, -1, -128, -128, -128, -128,
        ];
        let mut c = [i32::MIN, 0, 0, 0];
        // SAFETY: every row read or written lies inside `a`, `b` and `c` (8 bytes, stride 8).
        unsafe {
            unit.load_config(&small_config());
            unit.load::<0>(c.as_ptr().cast(), 8);
            unit.load::<1>(a.as_ptr(), 8);
            unit.load::<2>(b.as_ptr().cast(), 8);
            unit.dpbusd::<0, 1, 2>();
            unit.store::<0>(c.as_mut_ptr().cast(), 8);
        }
        let naive = |i: usize, j: usize| -> i32 {
            (0..8)
                .map(|kq| i32::from(a[8 * i + kq]) * i32::from(b[8 * (kq / 4) + 4 * j + kq % 4]))
                .sum()
        };
        let expected = [
            i32::MIN.wrapping_add(naive(0, 0)),
            naive(0, 1),
            naive(1, 0),
            naive(1, 1),
        ];
        assert_eq!(c, expected);
    }

    #[test]
    #[should_panic(expected = "#UD: tdpbusd shapes")]
    fn dpbusd_rejects_mismatched_shapes() {
        let mut config = small_config();
        config.colsb[1] = 4;
        let mut unit = Emulated::new();
        // SAFETY: no memory is accessed; the shape check panics first.
        unsafe {
            unit.load_config(&config);
            unit.dpbusd::<0, 1, 2>();
        }
    }

    #[test]
    #[should_panic(expected = "#GP: tmm0 is 17")]
    fn config_rejects_a_tile_past_16_rows() {
        let mut config = TileConfig::uniform(16, 64);
        config.rows[0] = 17;
        // SAFETY: no memory is accessed; the configuration check panics.
        unsafe { Emulated::new().load_config(&config) };
    }

    #[test]
    #[should_panic(expected = "#UD: tmm3 is not configured")]
    fn access_outside_the_configured_tiles_faults() {
        let out = [0u8; 64];
        let mut unit = Emulated::new();
        // SAFETY: tile 3 is unconfigured, so the load faults before reading anything.
        unsafe {
            unit.load_config(&small_config());
            unit.load::<3>(out.as_ptr(), 8);
        }
    }

    #[test]
    #[should_panic(expected = "before ldtilecfg")]
    fn instructions_after_release_fault() {
        let mut unit = Emulated::new();
        // SAFETY: nothing is accessed; the unit is unconfigured after the release.
        unsafe {
            unit.load_config(&TileConfig::uniform(16, 64));
            unit.release();
            unit.zero::<0>();
        }
    }

    #[test]
    fn a_load_reads_only_the_configured_rows_and_bytes() {
        let src: Vec<u8> = (0..=255).collect();
        let mut dst = [0xAAu8; 32];
        let mut unit = Emulated::new();
        // SAFETY: 2 rows of 8 bytes at stride 100 read `src[0..108]`; the store writes
        // `dst[0..24]` (stride 16).
        unsafe {
            unit.load_config(&small_config());
            unit.load::<1>(src.as_ptr(), 100);
            unit.store::<1>(dst.as_mut_ptr(), 16);
        }
        assert_eq!(dst[..8], src[..8]);
        assert_eq!(dst[8..16], [0xAA; 8]);
        assert_eq!(dst[16..24], src[100..108]);
        assert_eq!(dst[24..], [0xAA; 8]);
    }
}
