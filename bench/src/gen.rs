//! Synthetic traces in Mooncake's format, so policies are judged on more than
//! one file: different reuse shapes, chain lengths and popularity skews.
//!
//! Every shape draws from a seeded generator (same seed, same trace) and
//! writes JSON lines with `timestamp` (ms), `input_length` (512 tokens a
//! block), `output_length` and `hash_ids` (prefix-chained: a block id names
//! its whole prefix).

use std::io::Write;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A reuse shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Multi-turn chats: conversations picked by popularity, each turn
    /// extending its conversation's chain; a shared system prompt.
    Chat,
    /// Retrieval: documents of fixed chains, picked by popularity, each
    /// request reading a prefix of its document.
    Docs,
    /// A hot set of short shared prefixes under a stream of long one-off
    /// chains (scans that pollute a recency-only cache).
    Scan,
    /// Agents: a few long tool-use sessions that grow for a long time and are
    /// revisited after long gaps.
    Agents,
}

/// Settings of a synthetic trace.
#[derive(Debug, Clone, Copy)]
pub struct GenArgs {
    /// Which shape.
    pub shape: Shape,
    /// Requests.
    pub requests: usize,
    /// Popularity skew (Zipf exponent; 0 is uniform).
    pub skew: f64,
    /// Typical chain length in blocks.
    pub chain: usize,
    /// Seed.
    pub seed: u64,
}

/// Draws ranks 0..n with probability proportional to 1/(rank+1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cdf = (0..n.max(1))
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(s);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    fn draw(&self, rng: &mut SmallRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// Makes the requests (chains) of a synthetic trace.
pub fn generate(a: &GenArgs) -> Vec<Vec<u64>> {
    let mut rng = SmallRng::seed_from_u64(a.seed);
    let mut next_id = 0u64;
    let mut fresh = |n: usize| -> Vec<u64> {
        let v = (next_id..next_id + n as u64).collect();
        next_id += n as u64;
        v
    };
    let chain = a.chain.max(2);
    let mut out = Vec::with_capacity(a.requests);
    match a.shape {
        Shape::Chat => {
            let system = fresh(2);
            let convs = (a.requests / 4).max(1);
            let pick = Zipf::new(convs, a.skew);
            let mut history: Vec<Vec<u64>> = vec![Vec::new(); convs];
            for _ in 0..a.requests {
                let c = pick.draw(&mut rng);
                if history[c].is_empty() {
                    history[c] = system.clone();
                }
                // A turn adds the user's message (and the previous answer).
                let grow = rng.random_range(1..=chain.div_ceil(4).max(1));
                let add = fresh(grow);
                history[c].extend(add);
                // Conversations are cut when they pass 4x the typical length.
                if history[c].len() > 4 * chain {
                    history[c] = system.clone();
                    history[c].extend(fresh(grow));
                }
                out.push(history[c].clone());
            }
        }
        Shape::Docs => {
            let docs = (a.requests / 8).max(1);
            let pick = Zipf::new(docs, a.skew);
            let mut bodies: Vec<Option<Vec<u64>>> = vec![None; docs];
            for _ in 0..a.requests {
                let d = pick.draw(&mut rng);
                let body = bodies[d].get_or_insert_with(|| {
                    let len = rng.random_range(chain / 2..=chain * 3 / 2).max(1);
                    fresh(len)
                });
                let upto = rng.random_range(body.len() / 2..=body.len()).max(1);
                out.push(body[..upto].to_vec());
            }
        }
        Shape::Scan => {
            let hot = (a.requests / 20).max(1);
            let pick = Zipf::new(hot, a.skew);
            let prefixes: Vec<Vec<u64>> = (0..hot).map(|_| fresh((chain / 4).max(1))).collect();
            for _ in 0..a.requests {
                if rng.random_bool(0.3) {
                    // A one-off long chain: never asked for again.
                    out.push(fresh(chain * 2));
                } else {
                    let p = pick.draw(&mut rng);
                    let mut c = prefixes[p].clone();
                    c.extend(fresh(rng.random_range(1..=2)));
                    out.push(c);
                }
            }
        }
        Shape::Agents => {
            let agents = 16usize;
            let pick = Zipf::new(agents, a.skew);
            let mut sessions: Vec<Vec<u64>> = (0..agents).map(|_| fresh(chain)).collect();
            for _ in 0..a.requests {
                let s = pick.draw(&mut rng);
                let grow = rng.random_range(1..=3);
                let add = fresh(grow);
                sessions[s].extend(add);
                if sessions[s].len() > 8 * chain {
                    sessions[s] = fresh(chain);
                }
                out.push(sessions[s].clone());
            }
        }
    }
    out
}

/// Writes `chains` as a Mooncake-format trace, one request per 100 ms.
pub fn write_trace(path: &Path, chains: &[Vec<u64>]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (i, c) in chains.iter().enumerate() {
        let line = serde_json::json!({
            "timestamp": i as u64 * 100,
            "input_length": c.len() * 512,
            "output_length": 256,
            "hash_ids": c,
        });
        writeln!(f, "{line}")?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_prefix_chained_and_reproducible() {
        for shape in [Shape::Chat, Shape::Docs, Shape::Scan, Shape::Agents] {
            let a = GenArgs {
                shape,
                requests: 500,
                skew: 1.0,
                chain: 12,
                seed: 7,
            };
            let t = generate(&a);
            assert_eq!(t.len(), 500);
            assert_eq!(t, generate(&a), "{shape:?}: same seed, same trace");
            // A block id always has the same parent (the chain before it).
            let mut parent = std::collections::HashMap::new();
            for c in &t {
                assert!(!c.is_empty());
                for (i, id) in c.iter().enumerate() {
                    let p = i.checked_sub(1).map(|j| c[j]);
                    assert_eq!(*parent.entry(*id).or_insert(p), p, "{shape:?}: id {id}");
                }
            }
            // Some reuse, and not all reuse.
            let distinct: std::collections::HashSet<_> = t.iter().flatten().collect();
            let total: usize = t.iter().map(|c| c.len()).sum();
            assert!(distinct.len() < total, "{shape:?} has no reuse");
            assert!(distinct.len() > total / 50, "{shape:?} is nearly all reuse");
        }
    }
}
