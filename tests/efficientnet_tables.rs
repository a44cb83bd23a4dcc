//! EfficientNet's scaling tables as bbc elaborates them from `specs/efficientnet.bb`.
//!
//! The structure of each model is read back from the elaborated graph: the input side, the
//! stem and head widths (`conv_stem.weight`, `conv_head.weight`), and per stage the number of
//! blocks and their output channels (`blocks.{s}.{j}.conv_pwl.weight`, or `conv_pw.weight` in
//! the depthwise-separable first stage).

use bbc::compiler::elab::{make_divisible, round_half_even, FsLoader, Options, Program};
use bbc::compiler::weights::param_table;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, PartialEq)]
struct Structure {
    res: usize,
    stem: usize,
    head: usize,
    /// (output channels, repeats) per stage.
    stages: Vec<(usize, usize)>,
}

fn structure(model: &str, args: &[(&str, &str)]) -> Structure {
    let program = Program::load(Path::new("specs/efficientnet.bb"), &FsLoader)
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let opts = Options {
        model: Some(model.to_string()),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let m = program
        .elaborate(&opts)
        .unwrap_or_else(|d| panic!("{model}: {}", bbc::render(&d, Some(&program.sources))));
    let table = param_table(&m.graph);
    let out = |key: &str| table.iter().find(|p| p.key == key).map(|p| p.shape[0]);
    // (stage, block) -> output channels of that block.
    let mut blocks = BTreeMap::new();
    for p in &table {
        let parts: Vec<&str> = p.key.splitn(4, '.').collect();
        if parts[0] == "blocks" && parts[3] == "bn1.weight" {
            let (s, j): (usize, usize) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
            let prefix = format!("blocks.{s}.{j}");
            let c = out(&format!("{prefix}.conv_pwl.weight"))
                .or_else(|| out(&format!("{prefix}.conv_pw.weight")))
                .unwrap();
            blocks.insert((s, j), c);
        }
    }
    let n_stages = blocks.keys().map(|&(s, _)| s + 1).max().unwrap();
    let stages = (0..n_stages)
        .map(|s| {
            let outs: Vec<usize> = blocks.range((s, 0)..(s + 1, 0)).map(|(_, &c)| c).collect();
            assert!(
                outs.iter().all(|&c| c == outs[0]),
                "{model}: stage {s} widths {outs:?}"
            );
            (outs[0], outs.len())
        })
        .collect();
    let x = m.graph.node(m.graph.find("x").expect("input x"));
    Structure {
        res: x.shape[2],
        stem: out("conv_stem.weight").unwrap(),
        head: out("conv_head.weight").unwrap(),
        stages,
    }
}

/// (model, input side, stem width, head width, [(channels, repeats); 7 stages])
type Row = (&'static str, usize, usize, usize, [(usize, usize); 7]);

/// Golden tables computed from timm 1.0.31 with Python: `timm.create_model(f"efficientnet_b{i}")`,
/// `conv_stem.out_channels`, `conv_head.out_channels`, and per stage `len(model.blocks[s])` and
/// the blocks' `conv_pwl` (`conv_pw` in stage 0) `out_channels`. Resolutions are the paper's
/// (timm `_gen_efficientnet` docstring), not timm's pretrained_cfg train sizes.
#[rustfmt::skip]
const TIMM: [Row; 8] = [
    ("efficientnet_b0", 224, 32, 1280, [(16, 1), (24, 2), (40, 2), (80, 3), (112, 3), (192, 4), (320, 1)]),
    ("efficientnet_b1", 240, 32, 1280, [(16, 2), (24, 3), (40, 3), (80, 4), (112, 4), (192, 5), (320, 2)]),
    ("efficientnet_b2", 260, 32, 1408, [(16, 2), (24, 3), (48, 3), (88, 4), (120, 4), (208, 5), (352, 2)]),
    ("efficientnet_b3", 300, 40, 1536, [(24, 2), (32, 3), (48, 3), (96, 5), (136, 5), (232, 6), (384, 2)]),
    ("efficientnet_b4", 380, 48, 1792, [(24, 2), (32, 4), (56, 4), (112, 6), (160, 6), (272, 8), (448, 2)]),
    ("efficientnet_b5", 456, 48, 2048, [(24, 3), (40, 5), (64, 5), (128, 7), (176, 7), (304, 9), (512, 3)]),
    ("efficientnet_b6", 528, 56, 2304, [(32, 3), (40, 6), (72, 6), (144, 8), (200, 8), (344, 11), (576, 3)]),
    ("efficientnet_b7", 600, 64, 2560, [(32, 4), (48, 7), (80, 7), (160, 10), (224, 10), (384, 13), (640, 4)]),
];

#[test]
fn published_family_matches_timm() {
    for (model, res, stem, head, stages) in TIMM {
        let expected = Structure {
            res,
            stem,
            head,
            stages: stages.to_vec(),
        };
        assert_eq!(structure(model, &[]), expected, "{model}");
    }
}

#[test]
fn compound_scaling_rule() {
    assert_eq!(
        structure("efficientnet_phi", &[("phi", "0")]),
        structure("efficientnet_b0", &[])
    );
    for phi in 1..=3 {
        // alpha = 1.2 (depth), beta = 1.1 (width), gamma = 1.15 (resolution), applied to B0's
        // stem 32, head 1280 and stage table (the first row of TIMM, the paper's Table 1).
        let (depth, width) = (1.2f64.powf(phi as f64), 1.1f64.powf(phi as f64));
        let ch = |c: usize| make_divisible(c as f64 * width, 8, None, 0.9) as usize;
        let expected = Structure {
            res: round_half_even(224.0 * 1.15f64.powf(phi as f64) / 8.0) as usize * 8,
            stem: ch(32),
            head: ch(1280),
            stages: TIMM[0]
                .4
                .iter()
                .map(|&(c, r)| (ch(c), (r as f64 * depth).ceil() as usize))
                .collect(),
        };
        let phi_arg = phi.to_string();
        assert_eq!(
            structure("efficientnet_phi", &[("phi", &phi_arg)]),
            expected,
            "phi={phi}"
        );
    }
    // The rule is not the published table: phi = 2 is not B3 (head 1552 vs 1536, 296 vs 300 px).
    assert_ne!(
        structure("efficientnet_phi", &[("phi", "2")]),
        structure("efficientnet_b3", &[])
    );
}
