//! A sequence classifier: a BERT-family encoder, pooling, and a linear head named `classifier`
//! (HuggingFace's name), so a saved model is one safetensors file in HuggingFace layout.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};
use distillery_crds::distillation::Pooling;

use crate::model::encoder::{Encoder, EncoderConfig, EncoderOutput, cls_pool, mean_pool};

/// Encoder + pooling + linear head.
pub struct Classifier {
    /// The encoder.
    pub encoder: Encoder,
    /// The head, `(hidden → classes)`.
    pub head: Linear,
    /// How token states are pooled.
    pub pooling: Pooling,
    /// BERT's pooler (`pooler.dense`), with [`Pooling::Pooler`].
    pub pooler: Option<Linear>,
}

/// A forward pass's outputs.
pub struct ClassifierOutput {
    /// `(batch, classes)`.
    pub logits: Tensor,
    /// `(batch, hidden)`.
    pub pooled: Tensor,
    /// Every layer's output run in this pass.
    pub encoder: EncoderOutput,
}

impl Classifier {
    /// Builds the classifier: the encoder from `encoder_vb` and the head (`classifier`, and
    /// `pooler.dense` with [`Pooling::Pooler`]) from `head_vb` (kept apart so a pretrained encoder
    /// can be loaded into a map without a head).
    pub fn new(
        config: &EncoderConfig,
        classes: usize,
        pooling: Pooling,
        encoder_vb: VarBuilder,
        head_vb: VarBuilder,
    ) -> Result<Self> {
        let hidden = config.hidden_size;
        let pooler = (pooling == Pooling::Pooler)
            .then(|| linear(hidden, hidden, head_vb.pp("pooler").pp("dense")))
            .transpose()?;
        Ok(Self {
            encoder: Encoder::new(config, encoder_vb)?,
            head: linear(hidden, classes, head_vb.pp("classifier"))?,
            pooling,
            pooler,
        })
    }

    /// Pools the last hidden state.
    pub fn pool(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        match self.pooling {
            Pooling::Mean => mean_pool(hidden, attention_mask),
            Pooling::Cls => cls_pool(hidden),
            Pooling::Pooler => match &self.pooler {
                Some(dense) => dense.forward(&cls_pool(hidden)?)?.tanh(),
                None => candle_core::bail!("pooling `pooler` needs pooler.dense weights"),
            },
        }
    }

    /// Logits, pooled embedding and hidden states for a batch.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<ClassifierOutput> {
        self.forward_from(0, None, input_ids, attention_mask)
    }

    /// Like [`Self::forward`] with the embeddings and layers `..frozen` run without gradients: only
    /// the layers above them (and the head) are trained, and backpropagation stops there.
    pub fn forward_frozen_below(
        &self,
        frozen: usize,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        if frozen == 0 {
            return self.forward(input_ids, attention_mask);
        }
        let lower = self.encoder.frozen_lower(frozen, input_ids, attention_mask)?;
        self.forward_from(frozen, Some(&lower), input_ids, attention_mask)
    }

    /// Like [`Self::forward`], starting at layer `start` from cached `hidden` (see
    /// [`Encoder::forward_from`]).
    pub fn forward_from(
        &self,
        start: usize,
        hidden: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClassifierOutput> {
        let encoder = self.encoder.forward_from(start, hidden, input_ids, attention_mask)?;
        let pooled = self.pool(encoder.last(), attention_mask)?;
        let logits = self.head.forward(&pooled)?;
        Ok(ClassifierOutput { logits, pooled, encoder })
    }
}
