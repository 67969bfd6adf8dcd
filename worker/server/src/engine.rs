//! Model threads: each owns one ONNX Runtime session and loops taking batches from the
//! [`Queue`], running them in length-sorted runs ([`plan_runs`]) and replying to every request.
//! They are plain OS threads, so model compute never blocks the async runtime.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::batching::{BatchLimits, Job, Queue, Reply, plan_runs};
use crate::metrics::Metrics;
use crate::protocol::{Prediction, argmax, softmax};
use distillery_model::session::OnnxSession;

/// The running model threads.
pub struct Engine {
    queue: Arc<Queue>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts one model thread per session, taking batches from `queue` within `limits`.
    pub fn start(
        sessions: Vec<OnnxSession>,
        queue: Arc<Queue>,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        labels: Arc<Vec<String>>,
    ) -> Self {
        let threads = sessions
            .into_iter()
            .enumerate()
            .map(|(k, mut session)| {
                let (queue, metrics, labels) = (queue.clone(), metrics.clone(), labels.clone());
                std::thread::Builder::new()
                    .name(format!("model-{k}"))
                    .spawn(move || {
                        while let Some((batch, depth)) = queue.next_batch(&limits) {
                            metrics.queue_depth.set(depth as i64);
                            run_batch(&mut session, batch, &limits, &metrics, &labels);
                        }
                    })
                    .expect("spawning a model thread")
            })
            .collect();
        Self { queue, threads }
    }

    /// Closes the queue, lets the model threads finish what is queued, and waits for them.
    pub fn stop(self) {
        self.queue.close();
        for t in self.threads {
            t.join().ok();
        }
    }
}

/// Runs every sequence of `batch` and replies to each job.
fn run_batch(session: &mut OnnxSession, batch: Vec<Job>, limits: &BatchLimits, metrics: &Metrics, labels: &[String]) {
    let started = Instant::now();
    // (job, sequence) of every sequence, shortest first.
    let mut order: Vec<(usize, usize)> =
        batch.iter().enumerate().flat_map(|(j, job)| (0..job.sequences.len()).map(move |s| (j, s))).collect();
    order.sort_by_key(|&(j, s)| batch[j].sequences[s].len());
    let lengths: Vec<usize> = order.iter().map(|&(j, s)| batch[j].sequences[s].len()).collect();
    let mut predictions: Vec<Prediction> = batch
        .iter()
        .map(|job| Prediction {
            logits: vec![vec![]; job.sequences.len()],
            embedding: vec![vec![]; job.sequences.len()],
        })
        .collect();
    let mut failed: Vec<Option<String>> = vec![None; batch.len()];
    for run in plan_runs(&lengths, limits.max_batch_size, limits.max_batch_tokens) {
        let members = &order[run];
        let sequences: Vec<&[u32]> = members.iter().map(|&(j, s)| batch[j].sequences[s].as_slice()).collect();
        let t = Instant::now();
        let result = session.run(&sequences);
        metrics.run_duration.observe(t.elapsed().as_secs_f64());
        metrics.batch_size.observe(sequences.len() as f64);
        match result {
            Ok(out) => {
                for ((&(j, s), logits), embedding) in members.iter().zip(out.logits).zip(out.embedding) {
                    predictions[j].logits[s] = logits;
                    predictions[j].embedding[s] = embedding;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, sequences = sequences.len(), "model run failed");
                for &(j, _) in members {
                    failed[j] = Some(e.to_string());
                }
            }
        }
    }
    for ((job, prediction), failure) in batch.into_iter().zip(predictions).zip(failed) {
        metrics.queue_wait.observe(started.saturating_duration_since(job.enqueued).as_secs_f64());
        let reply: Reply = match failure {
            Some(e) => Err(e),
            None => {
                for logits in &prediction.logits {
                    let k = argmax(logits);
                    if let Some(class) = labels.get(k) {
                        metrics.prediction(class, softmax(logits)[k]);
                    }
                }
                Ok(prediction)
            }
        };
        // The requester may have gone (client disconnected); nothing to do then.
        job.reply.send(reply).ok();
    }
}
