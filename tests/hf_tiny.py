"""Tiny transformers models built straight from configs (random weights), for rule conformance."""
from __future__ import annotations

import torch
import transformers as tf

IDS = (2, 8)


def _ids(batch: int = 2, length: int = 8) -> torch.Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(1))


def _patches() -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(1, 5.0), torch.arange(1, 5.0), indexing="ij")
    coords = torch.stack([rows, cols], -1).view(1, 16, 2)
    return torch.cat([coords, torch.randn(1, 16, 48, generator=torch.Generator().manual_seed(2))], -1)


def gpt2(attn):
    cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
                        eos_token_id=0, attn_implementation=attn)
    return tf.GPT2LMHeadModel(cfg), (_ids(),), {}


def bert(attn):
    cfg = tf.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, attn_implementation=attn)
    return tf.BertForSequenceClassification(cfg), (_ids(),), {}


def roberta(attn):
    cfg = tf.RobertaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                           vocab_size=100, attn_implementation=attn)
    return tf.RobertaForMaskedLM(cfg), (_ids(),), {}


def t5(attn):
    cfg = tf.T5Config(num_layers=2, d_model=32, num_heads=2, d_ff=64, vocab_size=100, d_kv=16,
                      attn_implementation=attn)
    ids = _ids()
    return tf.T5ForConditionalGeneration(cfg), (ids,), {"decoder_input_ids": ids[:, :4]}


def llama(attn):
    cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=100, attn_implementation=attn)
    return tf.LlamaForCausalLM(cfg), (_ids(),), {}


def gemma3(attn):
    cfg = tf.Gemma3TextConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=8, intermediate_size=64, vocab_size=100, sliding_window=4,
                              attn_implementation=attn)
    return tf.Gemma3ForCausalLM(cfg), (_ids(),), {}


def qwen3(attn):
    cfg = tf.Qwen3Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, intermediate_size=64, vocab_size=100, attn_implementation=attn)
    return tf.Qwen3ForCausalLM(cfg), (_ids(),), {}


def mixtral(attn):
    cfg = tf.MixtralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64, vocab_size=100, num_local_experts=4, num_experts_per_tok=2,
                           attn_implementation=attn)
    return tf.MixtralForCausalLM(cfg), (_ids(),), {}


def whisper(attn):
    cfg = tf.WhisperConfig(encoder_layers=1, decoder_layers=1, d_model=32, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                           num_mel_bins=16, max_source_positions=20, max_target_positions=16, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, decoder_start_token_id=0, attn_implementation=attn)
    features = torch.randn(1, 16, 40, generator=torch.Generator().manual_seed(3))
    return tf.WhisperForConditionalGeneration(cfg), (features,), {"decoder_input_ids": _ids(1, 4)}


def wav2vec2(attn):
    cfg = tf.Wav2Vec2Config(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                            vocab_size=20, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, attn_implementation=attn)
    return tf.Wav2Vec2ForCTC(cfg), (torch.randn(1, 400, generator=torch.Generator().manual_seed(4)),), {}


def vit(attn):
    cfg = tf.ViTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=5, attn_implementation=attn)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    return tf.ViTForImageClassification(cfg), (image,), {}


def siglip(attn):
    cfg = tf.SiglipVisionConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=8, attn_implementation=attn)
    return tf.SiglipVisionModel(cfg), (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6)),), {}


def pix2struct(attn):
    cfg = tf.Pix2StructConfig(
        text_config=dict(num_layers=1, hidden_size=32, num_heads=2, d_ff=64, d_kv=16, vocab_size=100,
                         pad_token_id=0, decoder_start_token_id=0, eos_token_id=1),
        vision_config=dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, d_ff=64, d_kv=16,
                           patch_embed_hidden_size=48, seq_len=64),
        attn_implementation=attn)
    return (tf.Pix2StructForConditionalGeneration(cfg), (),
            {"flattened_patches": _patches(), "decoder_input_ids": _ids(1, 4)})


def mamba(attn):
    cfg = tf.MambaConfig(num_hidden_layers=2, hidden_size=32, state_size=4, vocab_size=100, expand=2, conv_kernel=4)
    return tf.MambaForCausalLM(cfg), (_ids(),), {}


MODELS = {"gpt2": gpt2, "bert": bert, "roberta": roberta, "t5": t5, "llama": llama, "gemma3": gemma3,
          "qwen3": qwen3, "mixtral": mixtral, "whisper": whisper, "wav2vec2": wav2vec2, "vit": vit,
          "siglip": siglip, "pix2struct": pix2struct, "mamba": mamba}
NO_SDPA = {"mamba"}
FLOAT32_ONLY = {"mixtral"}  # torch._grouped_mm (MoE experts) has no float64 CPU kernel


def build(name: str, attn: str = "eager", dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    model, args, kwargs = MODELS[name](attn)
    model = model.to(dtype).eval()
    cast = [a.to(dtype) if a.is_floating_point() else a for a in args]
    kwargs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kwargs.items()}
    return model, tuple(cast), kwargs
