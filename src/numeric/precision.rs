//! Sensitivity analysis and automatic precision selection.
//!
//! Both measure the model's final output against the float model's on the batches given (which
//! also calibrate every variant tried, so the answer is about data the user chose): SQNR and
//! cosine over all outputs, and top-1 agreement when the output is `[N, classes]` scores.
//! [`sensitivity`] tries each quantized node alone quantized and alone at higher precision
//! (16-bit activations for conv/linear, float for the rest); [`auto_precision`] moves the
//! fewest conv/linear outputs it can find to 16 bits (float only when 16 bits cannot reach
//! the budget) and returns an ordinary [`QConfigMap`].

use std::fmt;

use burn::tensor::Tensor;

use super::Comparison;
use crate::exec::FloatExecutor;
use crate::graph::Graph;
use crate::observe::QDType;
use crate::ops::float_values;
use crate::prepare::{Int8Op, Placement, PrepareOptions, PreparedModel, prepare_with};
use crate::qconfig::{QConfig, QConfigMap};
use crate::quantized::convert;
use crate::{Error, Result};

/// How close a quantized model's outputs are to the float model's over a set of batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// Cosine similarity of all outputs.
    pub cosine: f64,
    /// SQNR of all outputs, in dB.
    pub sqnr_db: f64,
    /// Fraction of rows whose largest output is the float model's (for `[N, classes]`
    /// outputs).
    pub agreement: Option<f64>,
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cos {:.6} sqnr {:6.2} dB", self.cosine, self.sqnr_db)?;
        match self.agreement {
            Some(a) => write!(f, " top1 agreement {a:.4}"),
            None => Ok(()),
        }
    }
}

/// An accuracy budget on the batches given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Top-1 agreement with the float model of at least this fraction.
    Agreement(f64),
    /// Output cosine similarity with the float model of at least this.
    Cosine(f64),
}

impl Budget {
    /// The budget's measure of a score (what the search ranks by).
    fn measure(&self, score: &Score) -> f64 {
        match self {
            Budget::Agreement(_) => score.agreement.unwrap_or(0.0),
            Budget::Cosine(_) => score.cosine,
        }
    }

    /// Whether `score` meets the budget.
    pub fn met(&self, score: &Score) -> bool {
        match self {
            Budget::Agreement(a) | Budget::Cosine(a) => self.measure(score) >= *a,
        }
    }
}

/// The batches and the float model's outputs on them, made once.
struct Reference<'a, const DI: usize> {
    batches: &'a [Tensor<DI>],
    float: Vec<Vec<f32>>,
    /// Classes per row when the output is `[N, classes]`.
    classes: Option<usize>,
}

impl<'a, const DI: usize> Reference<'a, DI> {
    fn new(graph: &Graph, batches: &'a [Tensor<DI>]) -> Result<Self> {
        let first = batches
            .first()
            .ok_or_else(|| Error::Calibration("precision search: no batch was given".into()))?;
        let executor = FloatExecutor::new(graph, &first.device())?;
        let mut float = Vec::new();
        let mut classes = None;
        for batch in batches {
            let outputs = executor.run(vec![batch.clone().into_dispatch()])?;
            let [output] = <[_; 1]>::try_from(outputs).map_err(|_| {
                Error::Unsupported("precision search: a model with several outputs".into())
            })?;
            let shape = burn::backend::TensorMetadata::shape(&output).to_vec();
            classes = (shape.len() == 2).then(|| shape[1]);
            float.push(float_values::<f32>(output)?);
        }
        Ok(Reference {
            batches,
            float,
            classes,
        })
    }

    /// `variant` calibrated on the batches.
    fn calibrated<const DO: usize>(&self, mut variant: PreparedModel) -> Result<PreparedModel> {
        for batch in self.batches {
            variant.forward::<DI, DO>(batch.clone())?;
        }
        Ok(variant)
    }

    /// `prepared`'s graph under `qconfigs`, calibrated: from the sources' statistics when they
    /// hold all it needs (no model run), else on the batches.
    fn variant<const DO: usize>(
        &self,
        prepared: &PreparedModel,
        qconfigs: Vec<Option<QConfig>>,
        sources: &[PreparedModel],
    ) -> Result<PreparedModel> {
        let sources: Vec<&PreparedModel> = sources.iter().collect();
        match prepared.with_qconfigs_from(qconfigs.clone(), &sources)? {
            Some(variant) => Ok(variant),
            None => self.calibrated::<DO>(prepared.with_qconfigs(qconfigs)?),
        }
    }

    /// The calibrated models whose statistics the variants of `prepared` reuse: as configured,
    /// and with every conv/linear output at 16 bits.
    fn sources<const DO: usize>(&self, prepared: &PreparedModel) -> Result<Vec<PreparedModel>> {
        let base = prepared.qconfigs();
        let wide = (quantized_nodes(prepared).into_iter())
            .filter(|(_, h)| *h == Higher::Int16)
            .fold(base.to_vec(), |q, (n, h)| raised(&q, n, h));
        Ok(vec![
            self.calibrated::<DO>(prepared.with_qconfigs(base.to_vec())?)?,
            self.calibrated::<DO>(prepared.with_qconfigs(wide)?)?,
        ])
    }

    /// Converts calibrated `variant` and scores its outputs.
    fn score<const DO: usize>(&self, variant: PreparedModel) -> Result<Score> {
        let qmodel = convert(&variant)?;
        let (mut float, mut quantized) = (Vec::new(), Vec::new());
        for (batch, reference) in self.batches.iter().zip(&self.float) {
            let out: Tensor<DO> = qmodel.try_forward(batch.clone())?;
            quantized.extend(out.into_data().iter::<f32>());
            float.extend_from_slice(reference);
        }
        let c = Comparison::new(String::new(), String::new(), &float, &quantized);
        let agreement = self.classes.filter(|&k| k > 0).map(|k| {
            let rows = float.len() / k;
            let best = |row: &[f32]| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b]));
            let same = (float.chunks_exact(k).zip(quantized.chunks_exact(k)))
                .filter(|(f, q)| best(f) == best(q))
                .count();
            same as f64 / rows.max(1) as f64
        });
        Ok(Score {
            cosine: c.cosine,
            sqnr_db: c.sqnr_db,
            agreement,
        })
    }
}

/// What keeping a node at higher precision means for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Higher {
    /// 16-bit activations (conv and linear nodes).
    Int16,
    /// 12-bit weights and 16-bit inputs from float (conv and linear nodes,
    /// [`QConfig::with_12bit_weights`] and [`QConfig::with_16bit_input`]): for layers limited
    /// by their weights' rounding, like a first convolution, whose output stays 8-bit.
    WideWeights,
    /// Float (nodes without 16-bit kernels).
    Float,
}

impl Higher {
    /// A short name: `int16`, `w16` or `float`.
    fn name(self) -> &'static str {
        match self {
            Higher::Int16 => "int16",
            Higher::WideWeights => "w12",
            Higher::Float => "float",
        }
    }
}

/// One node's effect on the model output.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSensitivity {
    /// The node's name (its layer's module path for layers).
    pub node: String,
    /// The node's op.
    pub op: String,
    /// The model with only this node quantized (every other node in float).
    pub only_quantized: Score,
    /// The model quantized as planned except this node, kept at `higher` precision.
    pub kept_higher: Score,
    /// The precision `kept_higher` used.
    pub higher: Higher,
}

/// [`sensitivity`]'s result: the model fully quantized as planned, and every quantized node,
/// most harmful first (lowest SQNR when it alone is quantized).
#[derive(Clone, Debug, PartialEq)]
pub struct SensitivityTable {
    /// The model quantized as planned.
    pub all_quantized: Score,
    /// One row per quantized node.
    pub rows: Vec<NodeSensitivity>,
}

impl fmt::Display for SensitivityTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "all quantized: {}", self.all_quantized)?;
        writeln!(
            f,
            "{:<32} {:<18} {:>44} | {:>6} all but this node quantized",
            "node", "op", "only this node quantized", "kept"
        )?;
        for r in &self.rows {
            let higher = r.higher.name();
            writeln!(
                f,
                "{:<32} {:<18} {:>44} | {higher:>6} {}",
                r.node,
                r.op,
                r.only_quantized.to_string(),
                r.kept_higher
            )?;
        }
        Ok(())
    }
}

/// The quantized nodes of a prepared model, with the higher precision each can be kept at.
fn quantized_nodes(prepared: &PreparedModel) -> Vec<(usize, Higher)> {
    (prepared.plan().placement.iter().enumerate())
        .filter_map(|(n, placement)| match placement {
            Placement::Int8(Int8Op::Conv2d | Int8Op::Linear) => Some((n, Higher::Int16)),
            Placement::Int8(_) => Some((n, Higher::Float)),
            Placement::Float(_) => None,
        })
        .collect()
}

/// `qconfigs` with node `n` at precision `higher`.
fn raised(qconfigs: &[Option<QConfig>], n: usize, higher: Higher) -> Vec<Option<QConfig>> {
    let mut qconfigs = qconfigs.to_vec();
    qconfigs[n] = match higher {
        Higher::Int16 => qconfigs[n].clone().map(QConfig::with_16bit_activations),
        Higher::WideWeights => {
            (qconfigs[n].clone()).map(|q| q.with_12bit_weights().with_16bit_input())
        }
        Higher::Float => None,
    };
    qconfigs
}

/// For every quantized node of `prepared` (its graph and qconfigs; calibrated or not): the
/// model output's error against float when only that node is quantized, and when only that
/// node is kept at higher precision. Every variant is calibrated on `batches` and scored on
/// them.
pub fn sensitivity<const DI: usize, const DO: usize>(
    prepared: &PreparedModel,
    batches: &[Tensor<DI>],
) -> Result<SensitivityTable> {
    let reference = Reference::new(prepared.graph(), batches)?;
    let sources = reference.sources::<DO>(prepared)?;
    let base = prepared.qconfigs();
    let score = |qconfigs: Vec<Option<QConfig>>| -> Result<Score> {
        reference.score::<DO>(reference.variant::<DO>(prepared, qconfigs, &sources)?)
    };
    let all_quantized = score(base.to_vec())?;
    let mut rows = Vec::new();
    for (n, higher) in quantized_nodes(prepared) {
        let mut alone = vec![None; base.len()];
        alone[n] = base[n].clone();
        let node = &prepared.graph().nodes[n];
        rows.push(NodeSensitivity {
            node: node.name.clone(),
            op: node.op.kind(),
            only_quantized: score(alone)?,
            kept_higher: score(raised(base, n, higher))?,
            higher,
        });
    }
    rows.sort_by(|a, b| {
        a.only_quantized
            .sqnr_db
            .total_cmp(&b.only_quantized.sqnr_db)
    });
    Ok(SensitivityTable {
        all_quantized,
        rows,
    })
}

/// What [`auto_precision`] chose, and why.
#[derive(Clone, Debug)]
pub struct PrecisionChoice {
    /// The qconfig map: the one given, with an entry per node moved (an ordinary map, to read,
    /// edit and keep).
    pub qconfig: QConfigMap,
    /// Nodes whose outputs were moved to 16 bits.
    pub int16: Vec<String>,
    /// Nodes whose weights were moved to 12 bits (and inputs from float to 16).
    pub wide_weights: Vec<String>,
    /// Nodes moved to float (only when 16 bits could not reach the budget).
    pub float: Vec<String>,
    /// The chosen model's score on the batches.
    pub score: Score,
    /// Whether the budget was met.
    pub met: bool,
    /// Every step of the search, one line each.
    pub log: Vec<String>,
}

impl fmt::Display for PrecisionChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.log {
            writeln!(f, "{line}")?;
        }
        let verdict = if self.met { "meets" } else { "does NOT meet" };
        write!(
            f,
            "chosen: {} node(s) at 16 bits {:?}, {} with 12-bit weights {:?}, {} in float {:?}; {}; {verdict} the budget",
            self.int16.len(),
            self.int16,
            self.wide_weights.len(),
            self.wide_weights,
            self.float.len(),
            self.float,
            self.score
        )
    }
}

/// Finds a [`QConfigMap`] meeting `budget` on `batches` with the fewest conv/linear outputs
/// or weights widened, float only if that cannot reach it: every conv/linear node is tried
/// alone with 16-bit activations and alone with 12-bit weights (and 16-bit inputs from float,
/// [`Higher::WideWeights`]), and the moves are
/// ranked by the budget's measure (then SQNR); moves are added in that order until the budget
/// is met (then, if it is not, their nodes turned to float in the same order); finally each
/// move that the budget does not need is dropped. Every model tried is prepared
/// with `options`, calibrated on `batches` and scored on them.
pub fn auto_precision<const DI: usize, const DO: usize>(
    graph: &Graph,
    qconfig: &QConfigMap,
    options: &PrepareOptions,
    batches: &[Tensor<DI>],
    budget: Budget,
) -> Result<PrecisionChoice> {
    let prepared = prepare_with(graph, qconfig, options)?;
    let reference = Reference::new(prepared.graph(), batches)?;
    let sources = reference.sources::<DO>(&prepared)?;
    let base = prepared.qconfigs();
    let name = |n: usize| prepared.graph().nodes[n].name.clone();
    let score = |moves: &[(usize, Higher)]| -> Result<Score> {
        let qconfigs = (moves.iter()).fold(base.to_vec(), |q, &(n, h)| raised(&q, n, h));
        reference.score::<DO>(reference.variant::<DO>(&prepared, qconfigs, &sources)?)
    };
    let mut log = Vec::new();
    let mut moves: Vec<(usize, Higher)> = Vec::new();
    let mut current = score(&moves)?;
    log.push(format!("as configured: {current}"));
    if !budget.met(&current) {
        let mut ranked = Vec::new();
        for (n, _) in quantized_nodes(&prepared)
            .into_iter()
            .filter(|(_, h)| *h == Higher::Int16)
        {
            for higher in [Higher::Int16, Higher::WideWeights] {
                ranked.push(((n, higher), score(&[(n, higher)])?));
            }
        }
        let key = |s: &Score| (budget.measure(s), s.sqnr_db);
        ranked.sort_by(|a, b| {
            key(&b.1)
                .partial_cmp(&key(&a.1))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for ((n, higher), alone) in ranked.iter().take(RANKED_SHOWN) {
            log.push(format!(
                "  ranked: `{}` {}: {alone}",
                name(*n),
                describe(*higher)
            ));
        }
        for &((n, higher), ref alone) in &ranked {
            moves.push((n, higher));
            // The first move alone was scored while ranking.
            current = if moves.len() == 1 {
                *alone
            } else {
                score(&moves)?
            };
            log.push(format!(
                "+ `{}` {} (alone: {alone}) -> {current}",
                name(n),
                describe(higher)
            ));
            if budget.met(&current) {
                break;
            }
        }
        for i in 0..moves.len() {
            if budget.met(&current) {
                break;
            }
            moves[i].1 = Higher::Float;
            current = score(&moves)?;
            log.push(format!(
                "16 bits are not enough: `{}` in float -> {current}",
                name(moves[i].0)
            ));
        }
        prune(&mut moves, &mut current, &mut log, budget, &score, &name)?;
    }
    choice(qconfig, &prepared, moves, current, budget, log)
}

/// How many of the best-ranked moves the search's log lists.
const RANKED_SHOWN: usize = 5;

/// How a move reads in the search's log.
fn describe(higher: Higher) -> &'static str {
    match higher {
        Higher::Int16 => "at 16 bits",
        Higher::WideWeights => "with 12-bit weights",
        Higher::Float => "in float",
    }
}

/// The score of the model with some nodes moved.
type ScoreOf<'a> = dyn Fn(&[(usize, Higher)]) -> Result<Score> + 'a;

/// Drops every move the budget does not need, last added first.
fn prune(
    moves: &mut Vec<(usize, Higher)>,
    current: &mut Score,
    log: &mut Vec<String>,
    budget: Budget,
    score: &ScoreOf,
    name: &dyn Fn(usize) -> String,
) -> Result<()> {
    if !budget.met(current) {
        return Ok(());
    }
    for i in (0..moves.len()).rev() {
        let mut fewer = moves.clone();
        let (n, _) = fewer.remove(i);
        let s = score(&fewer)?;
        if budget.met(&s) {
            log.push(format!("- `{}` is not needed -> {s}", name(n)));
            (*moves, *current) = (fewer, s);
        }
    }
    Ok(())
}

/// The map of the chosen moves, checked to resolve to them on the prepared graph.
fn choice(
    qconfig: &QConfigMap,
    prepared: &PreparedModel,
    moves: Vec<(usize, Higher)>,
    score: Score,
    budget: Budget,
    log: Vec<String>,
) -> Result<PrecisionChoice> {
    let base = prepared.qconfigs();
    let graph = prepared.graph();
    let expected = moves
        .iter()
        .fold(base.to_vec(), |q, &(n, h)| raised(&q, n, h));
    let mut map = qconfig.clone();
    let (mut int16, mut wide_weights, mut float) = (Vec::new(), Vec::new(), Vec::new());
    let mut nodes: Vec<usize> = moves.iter().map(|&(n, _)| n).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for n in nodes {
        let name = graph.nodes[n].name.clone();
        map = map.module(&name, expected[n].clone());
        match &expected[n] {
            None => float.push(name),
            Some(q) => {
                if q.activation.dtype == QDType::QUInt16 {
                    int16.push(name.clone());
                }
                if q.weight.dtype != QDType::QInt8 {
                    wide_weights.push(name);
                }
            }
        }
    }
    if map.resolve(graph)? != expected {
        return Err(Error::Unsupported(
            "precision search: a chosen node is not addressable by its module path".into(),
        ));
    }
    Ok(PrecisionChoice {
        qconfig: map,
        int16,
        wide_weights,
        float,
        met: budget.met(&score),
        score,
        log,
    })
}
