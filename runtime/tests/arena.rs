//! Property tests of the arena planner: no two simultaneously live values
//! overlap, offsets are aligned, and the plan is close to the lower bound.

use bbc_runtime::arena::{plan_arena, ArenaPlan, Lifetime, ARENA_ALIGN};
use proptest::prelude::*;

fn overlaps_in_time(a: &Lifetime, b: &Lifetime, last_step: usize) -> bool {
    let span = |v: &Lifetime| {
        if v.pinned {
            (0, last_step)
        } else {
            (v.first_def, v.last_use)
        }
    };
    let ((af, al), (bf, bl)) = (span(a), span(b));
    af <= bl && bf <= al
}

fn check_plan(values: &[Lifetime], plan: &ArenaPlan) {
    let last_step = values.iter().map(|v| v.last_use).max().unwrap_or(0);
    for (i, a) in values.iter().enumerate() {
        assert_eq!(plan.offsets[i] % ARENA_ALIGN, 0);
        assert!(plan.offsets[i] + a.bytes <= plan.size);
        for (j, b) in values.iter().enumerate().skip(i + 1) {
            if a.bytes == 0 || b.bytes == 0 || !overlaps_in_time(a, b, last_step) {
                continue;
            }
            let (ao, bo) = (plan.offsets[i], plan.offsets[j]);
            assert!(
                ao + a.bytes <= bo || bo + b.bytes <= ao,
                "values {i} {a:?} at {ao} and {j} {b:?} at {bo} overlap"
            );
        }
    }
    assert!(plan.size >= plan.lower_bound);
}

fn lifetime() -> impl Strategy<Value = Lifetime> {
    (
        0usize..5000,
        0usize..40,
        0usize..12,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(bytes, first, len, pinned)| Lifetime {
            bytes,
            first_def: first,
            last_use: first + len,
            pinned,
        })
}

proptest! {
    #[test]
    fn random_plans_are_valid_and_near_the_bound(values in prop::collection::vec(lifetime(), 0..120)) {
        let plan = plan_arena(&values).unwrap();
        check_plan(&values, &plan);
        // The greedy orders have no constant worst-case factor; over 2000
        // such instances the best of them measured median 1.01, p99 1.11,
        // max 1.18 times the bound, and a later run found one at 1.33 (kept in
        // the regressions file).
        prop_assert!(plan.size as f64 <= 1.4 * plan.lower_bound as f64,
            "size {} vs bound {}", plan.size, plan.lower_bound);
    }

    /// Network-shaped lifetimes: a chain where each step's output is read by
    /// the next step and sometimes by a later one (residual and skip links).
    #[test]
    fn network_plans_are_near_the_bound(
        sizes in prop::collection::vec(1usize..1_000_000, 2..200),
        skips in prop::collection::vec(0usize..4, 200),
    ) {
        let values: Vec<Lifetime> = sizes
            .iter()
            .enumerate()
            .map(|(step, &bytes)| Lifetime {
                bytes,
                first_def: step,
                last_use: step + 1 + skips[step],
                pinned: step == 0,
            })
            .collect();
        let plan = plan_arena(&values).unwrap();
        check_plan(&values, &plan);
        // Measured over 2000 instances with sizes spread over six orders of
        // magnitude: median 1.02, p99 1.19, max 1.28 times the bound.
        prop_assert!(plan.size as f64 <= 1.4 * plan.lower_bound as f64,
            "size {} vs bound {}", plan.size, plan.lower_bound);
    }
}
