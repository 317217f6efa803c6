//! The "embed" handler: a document cut into chunks, each embedded on the blocking pool (a mock:
//! feature hashing), then a mock I/O wait and a progress event.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use brigade_cancel::CancellationToken;
use brigade_jobs::{Job, JobError, JobId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::JobsConfig;
use crate::metrics::Metrics;

/// Dimensions of the mock embedding.
const DIMENSIONS: usize = 8;

/// A job's payload: what it embeds, and whose it is.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Embed {
    pub(super) document: String,
    pub(super) chunk_size: usize,
    pub(super) total: usize,
    /// The caller's key hash (`key:` and 32 hex digits) when API keys are configured.
    pub(super) owner: Option<String>,
}

/// A done job's result.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Embedded {
    dimensions: usize,
    chunks: Vec<Chunk>,
}

/// The mock embedding of one chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Chunk {
    index: usize,
    chars: usize,
    embedding: [f64; DIMENSIONS],
}

/// What the handler needs.
#[derive(Debug)]
pub(super) struct Cook {
    rounds: u32,
    chunk_io: Duration,
    fail_text: Option<Arc<str>>,
    effects: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

impl Cook {
    /// The handler's settings, from the flags; creates the effects directory if there is one.
    pub(super) fn new(config: &JobsConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        if let Some(dir) = &config.job_effects_dir {
            std::fs::create_dir_all(dir.join("done"))
                .map_err(|e| format!("--job-effects-dir {}: {e}", dir.display()))?;
        }
        Ok(Self {
            rounds: config.job_embed_rounds.get(),
            chunk_io: Duration::from_millis(config.job_chunk_io_ms),
            fail_text: config
                .job_fail_text
                .as_deref()
                .filter(|text| !text.is_empty())
                .map(Arc::from),
            effects: config.job_effects_dir.clone(),
            metrics,
        })
    }

    /// The "embed" handler: each chunk on the blocking pool, then the mock I/O wait, then a
    /// progress event.
    pub(super) async fn embed(&self, job: Job<Embed>) -> Result<Embedded, JobError> {
        let id = job.id();
        self.effect_line("start", id);
        let Embed {
            document,
            chunk_size,
            total,
            ..
        } = job.payload();
        let (chunk_size, total) = (*chunk_size, *total);
        let document: Arc<str> = Arc::from(document.as_str());
        let mut chunks = Vec::with_capacity(total);
        for (index, range) in chunk_ranges(&document, chunk_size).into_iter().enumerate() {
            let text = Arc::clone(&document);
            let rounds = self.rounds;
            let fail_text = self.fail_text.clone();
            let embedded = job
                .blocking(move |cancel| {
                    let chunk = text.get(range).unwrap_or_default();
                    if let Some(fail) = fail_text
                        && chunk.contains(&*fail)
                    {
                        panic!("the prep cook dropped a chunk (fail text)");
                    }
                    embed(chunk, rounds, cancel)
                })
                .await;
            let chunk = match embedded {
                Ok(Some(chunk)) => chunk,
                // The job's scope was cancelled: the worker decides what becomes of it.
                Ok(None) => return Err(JobError::retryable("cancelled while embedding")),
                Err(error) => {
                    self.metrics.jobs.failed.inc();
                    return Err(JobError::permanent(format!(
                        "embedding chunk {index} failed: {error}"
                    )));
                }
            };
            if !self.chunk_io.is_zero() {
                tokio::time::sleep(self.chunk_io).await;
            }
            job.progress()
                .send(&json!({ "done": index + 1, "total": total }))
                .await?;
            self.metrics.jobs.chunks.inc();
            chunks.push(Chunk { index, ..chunk });
        }
        if let Some(dir) = &self.effects {
            // Idempotent: the first execution to get here creates it, a repeat finds it.
            match std::fs::File::create_new(dir.join("done").join(id.to_string())) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(JobError::retryable(error)),
            }
        }
        self.effect_line("end", id);
        self.metrics.jobs.done.inc();
        Ok(Embedded {
            dimensions: DIMENSIONS,
            chunks,
        })
    }

    /// Appends `<what> <id> <pid>` to the effects directory's `runs.log`, if there is one.
    fn effect_line(&self, what: &str, id: JobId) {
        let Some(dir) = &self.effects else {
            return;
        };
        let line = format!("{what} {id} {}\n", std::process::id());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runs.log"))
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(%error, "could not append to runs.log");
        }
    }
}

/// The byte ranges of `text` in chunks of `chunk_size` characters (the last one shorter).
fn chunk_ranges(text: &str, chunk_size: usize) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (offset, _) in text.char_indices() {
        if count == chunk_size {
            ranges.push(start..offset);
            start = offset;
            count = 0;
        }
        count += 1;
    }
    if count > 0 {
        ranges.push(start..text.len());
    }
    ranges
}

/// The mock embedding: `rounds` passes of feature hashing over the chunk's bytes into
/// [`DIMENSIONS`] signed buckets, normalized to unit length and rounded to 6 decimals (all zeros
/// after zero rounds). The same chunk always gives the same vector. `None` if `cancel` fires first
/// (checked every round). Its `index` is 0: the caller sets it.
fn embed(chunk: &str, rounds: u32, cancel: &CancellationToken) -> Option<Chunk> {
    let mut sums = [0.0_f64; DIMENSIONS];
    for round in 0..rounds {
        if cancel.is_cancelled() {
            return None;
        }
        let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ mix(u64::from(round));
        for &byte in chunk.as_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            let mixed = mix(hash);
            let bucket = (mixed >> 32) as usize % DIMENSIONS;
            sums[bucket] += if mixed & 1 == 0 { 1.0 } else { -1.0 };
        }
    }
    let norm = sums.iter().map(|x| x * x).sum::<f64>().sqrt();
    let embedding = sums.map(|x| {
        if norm == 0.0 {
            0.0
        } else {
            (x / norm * 1e6).round() / 1e6
        }
    });
    Some(Chunk {
        index: 0,
        chars: chunk.chars().count(),
        embedding,
    })
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_on_characters_not_bytes() {
        let text = "héllo wörld";
        let ranges = chunk_ranges(text, 4);
        let chunks: Vec<&str> = ranges.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(chunks, ["héll", "o wö", "rld"]);
        assert_eq!(chunk_ranges("abc", 3).len(), 1);
        assert_eq!(chunk_ranges("abcd", 3).len(), 2);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let token = CancellationToken::new();
        let a = embed("the quick brown fox", 3, &token).unwrap();
        assert_eq!(a, embed("the quick brown fox", 3, &token).unwrap());
        assert_ne!(a, embed("the quick brown cat", 3, &token).unwrap());
        let norm: f64 = a.embedding.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        token.cancel();
        assert!(embed("anything", 3, &token).is_none());
    }
}
