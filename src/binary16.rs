//! IEEE 754 binary16, the element of pgvector's `halfvec` (SPEC §15): f32 to the
//! nearest f16 (ties to even) on the client, and back. An element whose magnitude
//! is beyond 65504, the largest finite f16, is refused by the caller (SPEC §15),
//! even one that would round down to 65504 (below 65520): a value the column
//! cannot hold is the producer's to fix, not ours to clamp.

/// The largest finite f16.
pub(crate) const MAX: f32 = 65504.0;

/// The f32 bits of [`MAX`]: a magnitude's bits above these are beyond it, and
/// every infinity and NaN is too.
const MAX_BITS: u32 = 0x477f_e000;

/// Whether `bits` (an f32's) is a magnitude beyond 65504, an infinity or a NaN:
/// what a halfvec must not take (SPEC §15).
#[inline]
pub(crate) fn beyond(bits: u32) -> bool {
    bits & 0x7fff_ffff > MAX_BITS
}

/// The f16 bits nearest to `x`, ties to even; ±infinity beyond the range, and a
/// quiet NaN for NaN.
#[inline]
pub(crate) fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    // The common case, an embedding's element in f16's normal range (2^-14 up to
    // 65536): round the dropped 13 bits to nearest, ties to even, by adding half
    // an f16 unit less one plus the kept lowest bit, then rebias the exponent. A
    // carry out of the significand raises the exponent; out of 65504, it reaches
    // exactly the infinity's bits. Everything else takes the general path.
    if abs.wrapping_sub(NORMAL_MIN) < NORMAL_END - NORMAL_MIN {
        let rounded = abs + 0x0fff + ((abs >> 13) & 1);
        return sign | ((rounded >> 13) - (112 << 10)) as u16;
    }
    general(bits, sign)
}

/// f32 bits of 2^-14, the smallest normal f16.
const NORMAL_MIN: u32 = 0x3880_0000;
/// f32 bits of 65536, the first power of two past f16's range.
const NORMAL_END: u32 = 0x4780_0000;

/// [`from_f32`] for every value outside f16's normal range: infinities, NaN,
/// overflow, subnormals and zero.
#[cold]
fn general(bits: u32, sign: u16) -> u16 {
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        let nan = if man == 0 { 0 } else { 0x0200 };
        return sign | 0x7c00 | nan;
    }
    // The f16 exponent, biased by 15.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Below f16's normal range: a multiple of 2^-24 (a subnormal, or zero). The
        // value in those units is the 24-bit significand shifted right by 14 - e;
        // below 2^-25 (e < -10) even rounding up cannot reach the smallest one.
        if e < -10 {
            return sign;
        }
        let significand = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let kept = significand >> shift;
        let rest = significand & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        let up = rest > half || (rest == half && kept & 1 == 1);
        // A carry out of the subnormals lands on the smallest normal: right.
        return sign | (kept + u32::from(up)) as u16;
    }
    let kept = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    let up = rest > 0x1000 || (rest == 0x1000 && kept & 1 == 1);
    // A carry out of the significand raises the exponent, and past 30 it gives
    // exactly the infinity's bits: overflow by rounding is caught the same way.
    sign | (kept + u32::from(up)) as u16
}

/// The f32 of f16 bits `h` (exact: every f16 is an f32).
#[inline]
pub(crate) fn to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    match exp {
        0 => {
            // Zero or a subnormal: man × 2^-24, exact in f32.
            let v = man as f32 / 16_777_216.0;
            f32::from_bits(v.to_bits() | sign)
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Whether f16 bits `h` are a finite number.
#[cfg(test)]
fn is_finite(h: u16) -> bool {
    h & 0x7c00 != 0x7c00
}

/// Whether f16 bits `h` are zero of either sign.
#[inline]
pub(crate) fn is_zero(h: u16) -> bool {
    h & 0x7fff == 0
}

/// The first element of `v` that a halfvec must not take (not finite, or beyond
/// ±65504), with its index.
pub(crate) fn first_beyond(v: &[f32]) -> Option<(usize, f32)> {
    v.iter()
        .position(|x| beyond(x.to_bits()))
        .map(|i| (i, v[i]))
}

/// Whether every element of `v` rounds to zero: a vector that a halfvec keeps
/// with no direction.
pub(crate) fn vanishes(v: &[f32]) -> bool {
    v.iter().all(|x| is_zero(from_f32(*x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every non-negative finite f16 as f64, in order of its bits (which is the
    /// order of its value), and 65536 for the first value past the range.
    fn ladder() -> Vec<f64> {
        let mut v: Vec<f64> = (0..=0x7bffu16).map(|h| f64::from(to_f32(h))).collect();
        v.push(65536.0);
        v
    }

    /// The nearest f16 by search over every f16 value, worked out in f64 apart
    /// from the conversion under test: ties to the even bits, 0x7c00 past 65504.
    fn reference(ladder: &[f64], x: f32) -> u16 {
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let a = f64::from(x.abs());
        let hi = ladder.partition_point(|v| *v < a).min(ladder.len() - 1);
        if ladder[hi] == a {
            return sign | hi as u16;
        }
        let lo = hi - 1;
        let (dl, dh) = (a - ladder[lo], ladder[hi] - a);
        let pick = if dl < dh || (dl == dh && lo % 2 == 0) {
            lo
        } else {
            hi
        };
        sign | pick as u16
    }

    #[test]
    fn every_f16_goes_to_f32_and_back_unchanged() {
        for h in 0..=u16::MAX {
            if is_finite(h) {
                assert_eq!(from_f32(to_f32(h)), h, "{h:#06x}");
            }
        }
        assert_eq!(to_f32(0x7bff), MAX);
        assert_eq!(to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(to_f32(0x7c00).is_infinite() && to_f32(0x7e00).is_nan());
    }

    #[test]
    fn ties_go_to_even_between_every_pair_of_neighbours() {
        let ladder = ladder();
        for h in 0..0x7bffu16 {
            let (a, b) = (to_f32(h), to_f32(h + 1));
            // The midpoint of two neighbours is exact in f32.
            let mid = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
            let even = if h % 2 == 0 { h } else { h + 1 };
            assert_eq!(from_f32(mid), even, "tie between {a} and {b}");
            assert_eq!(from_f32(-mid), 0x8000 | even);
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            assert_eq!(from_f32(below), h, "just below the tie of {a} and {b}");
            assert_eq!(from_f32(above), h + 1, "just above the tie of {a} and {b}");
            assert_eq!(from_f32(mid), reference(&ladder, mid));
        }
    }

    #[test]
    fn the_range_ends_where_rounding_reaches_65536() {
        let below_tie = f32::from_bits(65520f32.to_bits() - 1);
        assert_eq!(from_f32(65504.0), 0x7bff);
        assert_eq!(from_f32(below_tie), 0x7bff, "65519.996 rounds to 65504");
        assert_eq!(from_f32(-below_tie), 0xfbff);
        assert_eq!(from_f32(65520.0), 0x7c00, "the tie goes to the even 65536");
        assert_eq!(from_f32(-65520.0), 0xfc00);
        assert_eq!(from_f32(f32::MAX), 0x7c00);
        // SPEC §15 refuses what is beyond 65504, even what would round to it.
        let above_max = f32::from_bits(MAX.to_bits() + 1);
        assert_eq!(first_beyond(&[1.0, -above_max]), Some((1, -above_max)));
        assert_eq!(first_beyond(&[1.0, below_tie]), Some((1, below_tie)));
        assert_eq!(first_beyond(&[1.0, 0.5, -65520.0]), Some((2, -65520.0)));
        assert_eq!(first_beyond(&[1.0, f32::NAN]).map(|(i, _)| i), Some(1));
        assert_eq!(first_beyond(&[1.0, f32::INFINITY]).map(|(i, _)| i), Some(1));
        assert_eq!(first_beyond(&[MAX, -MAX, -0.0, 0.0]), None);
    }

    #[test]
    fn subnormals_and_underflow_round_to_nearest() {
        let tiny = 2f32.powi(-24);
        assert_eq!(from_f32(tiny), 0x0001);
        assert_eq!(
            from_f32(tiny / 2.0),
            0x0000,
            "half the smallest: tie to even 0"
        );
        assert_eq!(from_f32(f32::from_bits((tiny / 2.0).to_bits() + 1)), 0x0001);
        assert_eq!(
            from_f32(tiny * 1.5),
            0x0002,
            "tie between 1 and 2 units: even 2"
        );
        assert_eq!(
            from_f32(tiny * 2.5),
            0x0002,
            "tie between 2 and 3 units: even 2"
        );
        assert_eq!(from_f32(-1e-30), 0x8000);
        assert_eq!(from_f32(f32::from_bits(1)), 0x0000);
        // The largest subnormal rounds up into the smallest normal.
        let top = f32::from_bits(2f32.powi(-14).to_bits() - 1);
        assert_eq!(from_f32(top), 0x0400);
        assert!(vanishes(&[1e-9, -2e-8, 0.0]));
        assert!(!vanishes(&[1e-9, 3e-8]));
    }

    #[test]
    fn a_spread_of_f32_values_matches_the_reference() {
        let ladder = ladder();
        // Every 1021st bit pattern of the positive finite f32s, and a dense run
        // around the top of the range.
        let spread = (0..0x7f80_0000u32).step_by(1021);
        let top = 65000f32.to_bits()..66000f32.to_bits();
        for bits in spread.chain(top) {
            let x = f32::from_bits(bits);
            assert_eq!(from_f32(x), reference(&ladder, x), "{x:e} ({bits:#010x})");
            assert_eq!(from_f32(-x), reference(&ladder, -x), "{:e}", -x);
        }
    }
}
