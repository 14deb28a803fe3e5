"""Text models (transformers): encoders, decoders (dense and mixture-of-experts) and encoder-decoders.

Every ``full`` configuration is the published one of the checkpoint named in the builder's docstring;
``tiny`` overrides only sizes (and special token ids so that they stay inside the tiny vocabulary).
Decoders are built with ``use_cache=False`` (see :func:`model_zoo.scaling.hf_model`). Inputs: 1 x 16
token ids at full size, 1 x 8 for tiny; encoder-decoders get 4 decoder tokens. Language models return
``logits`` of shape ``(1, tokens, vocab)``; classifiers ``(1, labels)``.
"""
from __future__ import annotations

from .registry import register_model
from .scaling import decoder_ids, hf_model, pick, text_ids

HF_ATTN = ("eager", "sdpa")
TINY_VOCAB = 128
#: tiny encoder (BERT-like) sizes
TINY_ENCODER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                    vocab_size=TINY_VOCAB, max_position_embeddings=64)
#: tiny decoder (Llama-like) sizes; the number of key/value heads is set per model (grouped or not)
TINY_DECODER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, head_dim=8, intermediate_size=64,
                    vocab_size=TINY_VOCAB)
TINY_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _text(model_class, config_class, full, tiny, size, attn, no_cache=False):
    """A text model fed with ``input_ids`` only."""
    config = pick(size, full, tiny)
    model = hf_model(model_class, config_class, config, attn, no_cache=no_cache)
    return model, (text_ids(size, config["vocab_size"]),), {}


def _seq2seq(model_class, config_class, full, tiny, size, attn):
    """An encoder-decoder fed with ``input_ids`` and 4 ``decoder_input_ids``."""
    model, args, _ = _text(model_class, config_class, full, tiny, size, attn, no_cache=True)
    return model, args, {"decoder_input_ids": decoder_ids(pick(size, full, tiny)["vocab_size"])}


def _decoder(model_class, config_class, full, size, attn, **tiny):
    """A causal LM: ``full`` config, tiny = :data:`TINY_DECODER` + special ids + ``tiny``; no KV cache."""
    return _text(model_class, config_class, full, {**TINY_DECODER, **TINY_SPECIAL, **tiny}, size, attn, no_cache=True)


# ----------------------------------------------------------------------------------------------- the paper's


@register_model(name="gpt2", family="gpt2", modality="text", tags=("paper", "decoder", "transformer", "transformers"),
                paper_nodes=885, attn=HF_ATTN)
def gpt2(size, attn):
    """GPT-2 124M (openai-community/gpt2), LM head; Conv1D projections, learned positions, gelu_new."""
    full = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, activation_function="gelu_new",
                bos_token_id=50256, eos_token_id=50256)
    tiny = dict(vocab_size=TINY_VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1)
    return _text("GPT2LMHeadModel", "GPT2Config", full, tiny, size, attn, no_cache=True)


@register_model(name="roberta_large", family="roberta", modality="text",
                tags=("paper", "encoder", "transformer", "transformers"), paper_nodes=1461, attn=HF_ATTN)
def roberta_large(size, attn):
    """RoBERTa-large (FacebookAI/roberta-large), masked-LM head."""
    full = dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return _text("RobertaForMaskedLM", "RobertaConfig", full, TINY_ENCODER, size, attn)


@register_model(name="llama_3_2_1b", family="llama", modality="text",
                tags=("paper", "decoder", "transformer", "transformers"), paper_nodes=1787, attn=HF_ATTN)
def llama_3_2_1b(size, attn):
    """Llama-3.2-1B (meta-llama/Llama-3.2-1B): grouped-query attention (32 / 8 heads), llama3 RoPE, tied head."""
    full = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True, bos_token_id=128000,
                eos_token_id=128001, rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0,
                                                          low_freq_factor=1.0, high_freq_factor=4.0,
                                                          original_max_position_embeddings=8192))
    return _decoder("LlamaForCausalLM", "LlamaConfig", full, size, attn, num_key_value_heads=2)


@register_model(name="gemma_3_270m", family="gemma3", modality="text",
                tags=("paper", "decoder", "transformer", "transformers"), paper_nodes=2482, attn=HF_ATTN)
def gemma_3_270m(size, attn):
    """Gemma-3-270M (google/gemma-3-270m): 5 sliding-window layers per global one, QK-norm, 1 KV head."""
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    full = dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32768,
                rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                sliding_window=512, layer_types=pattern * 3, tie_word_embeddings=True, pad_token_id=0,
                eos_token_id=1, bos_token_id=2,
                rope_parameters=dict(sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                                     full_attention=dict(rope_type="default", rope_theta=1000000.0)))
    return _decoder("Gemma3ForCausalLM", "Gemma3TextConfig", full, size, attn, num_key_value_heads=1,
                    layer_types=["sliding_attention", "full_attention"])


@register_model(name="qwen3_0_6b", family="qwen3", modality="text",
                tags=("paper", "decoder", "transformer", "transformers"), paper_nodes=2590, attn=HF_ATTN)
def qwen3_0_6b(size, attn):
    """Qwen3-0.6B (Qwen/Qwen3-0.6B): QK-norm, grouped-query attention (16 / 8 heads), tied head."""
    full = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0))
    return _decoder("Qwen3ForCausalLM", "Qwen3Config", full, size, attn, num_key_value_heads=2)


@register_model(name="flan_t5_large", family="t5", modality="text",
                tags=("paper", "encoder-decoder", "transformer", "transformers"), paper_nodes=5713, attn=HF_ATTN)
def flan_t5_large(size, attn):
    """Flan-T5-large (google/flan-t5-large): gated-GELU, relative position buckets, untied head; 4 decoder tokens."""
    full = dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24,
                num_heads=16, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, layer_norm_epsilon=1e-6,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    tiny = dict(vocab_size=TINY_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
    return _seq2seq("T5ForConditionalGeneration", "T5Config", full, tiny, size, attn)


# ------------------------------------------------------------------------------------------------- encoders


@register_model(name="bert_base_uncased", family="bert", modality="text", tags=("encoder", "transformer",
                                                                                "transformers"), attn=HF_ATTN)
def bert_base_uncased(size, attn):
    """BERT-base-uncased (google-bert/bert-base-uncased) with a 2-label sequence-classification head."""
    full = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, num_labels=2)
    return _text("BertForSequenceClassification", "BertConfig", full, TINY_ENCODER, size, attn)


@register_model(name="distilbert_base_uncased", family="distilbert", modality="text",
                tags=("encoder", "transformer", "transformers"), attn=HF_ATTN)
def distilbert_base_uncased(size, attn):
    """DistilBERT-base-uncased (distilbert/distilbert-base-uncased), 2-label classification head."""
    full = dict(vocab_size=30522, max_position_embeddings=512, n_layers=6, n_heads=12, dim=768, hidden_dim=3072,
                activation="gelu", sinusoidal_pos_embds=False, num_labels=2)
    tiny = dict(vocab_size=TINY_VOCAB, max_position_embeddings=64, n_layers=2, n_heads=2, dim=32, hidden_dim=64)
    return _text("DistilBertForSequenceClassification", "DistilBertConfig", full, tiny, size, attn)


@register_model(name="deberta_v3_base", family="deberta-v2", modality="text",
                tags=("encoder", "transformer", "transformers"), attn=("eager",))
def deberta_v3_base(size, attn):
    """DeBERTa-v3-base (microsoft/deberta-v3-base): disentangled attention (c2p, p2c), 2-label head. No SDPA."""
    full = dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                pos_att_type=["p2c", "c2p"], position_biased_input=False, layer_norm_eps=1e-7, pad_token_id=0,
                num_labels=2)
    return _text("DebertaV2ForSequenceClassification", "DebertaV2Config", full, TINY_ENCODER, size, attn)


@register_model(name="albert_base_v2", family="albert", modality="text", tags=("encoder", "transformer",
                                                                              "transformers"), attn=HF_ATTN)
def albert_base_v2(size, attn):
    """ALBERT-base-v2 (albert/albert-base-v2): factorised embeddings (128), one layer shared 12 times; 2 labels."""
    full = dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu_new", max_position_embeddings=512, type_vocab_size=2,
                num_hidden_groups=1, inner_group_num=1, pad_token_id=0, bos_token_id=2, eos_token_id=3, num_labels=2)
    tiny = dict(TINY_ENCODER, embedding_size=16)
    return _text("AlbertForSequenceClassification", "AlbertConfig", full, tiny, size, attn)


@register_model(name="electra_base_discriminator", family="electra", modality="text",
                tags=("encoder", "transformer", "transformers"), attn=HF_ATTN)
def electra_base_discriminator(size, attn):
    """ELECTRA-base discriminator (google/electra-base-discriminator): replaced-token-detection head."""
    full = dict(vocab_size=30522, embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
    tiny = dict(TINY_ENCODER, embedding_size=TINY_ENCODER["hidden_size"])
    return _text("ElectraForPreTraining", "ElectraConfig", full, tiny, size, attn)


@register_model(name="xlm_roberta_base", family="xlm-roberta", modality="text",
                tags=("encoder", "transformer", "transformers"), attn=HF_ATTN)
def xlm_roberta_base(size, attn):
    """XLM-RoBERTa-base (FacebookAI/xlm-roberta-base), 250k vocabulary, 2-label classification head."""
    full = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2)
    return _text("XLMRobertaForSequenceClassification", "XLMRobertaConfig", full, TINY_ENCODER, size, attn)


@register_model(name="mt5_small_encoder", family="t5", modality="text", tags=("encoder", "transformer",
                                                                             "transformers"), attn=HF_ATTN)
def mt5_small_encoder(size, attn):
    """mT5-small encoder only (google/mt5-small, MT5EncoderModel): gated-GELU, 250k vocabulary."""
    full = dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                pad_token_id=0, eos_token_id=1)
    tiny = dict(vocab_size=TINY_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
    return _text("MT5EncoderModel", "MT5Config", full, tiny, size, attn)


# ------------------------------------------------------------------------------------------ encoder-decoder


@register_model(name="bart_base", family="bart", modality="text",
                tags=("encoder-decoder", "transformer", "transformers"), attn=HF_ATTN)
def bart_base(size, attn):
    """BART-base (facebook/bart-base), LM head; learned positions with offset 2; 4 decoder tokens."""
    full = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
                activation_function="gelu", scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                decoder_start_token_id=2, forced_eos_token_id=2)
    tiny = dict(vocab_size=TINY_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    return _seq2seq("BartForConditionalGeneration", "BartConfig", full, tiny, size, attn)


# ------------------------------------------------------------------------------------------------- decoders


@register_model(name="mistral_7b", family="mistral", modality="text", tags=("decoder", "transformer", "transformers"),
                attn=HF_ATTN)
def mistral_7b(size, attn):
    """Mistral-7B-v0.1 (mistralai/Mistral-7B-v0.1): sliding-window attention (4096), 32 / 8 heads."""
    full = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                rms_norm_eps=1e-5, sliding_window=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    return _decoder("MistralForCausalLM", "MistralConfig", full, size, attn, num_key_value_heads=2)


@register_model(name="mixtral_8x7b", family="mixtral", modality="text",
                tags=("decoder", "moe", "transformer", "transformers"), attn=HF_ATTN)
def mixtral_8x7b(size, attn):
    """Mixtral-8x7B-v0.1 (mistralai/Mixtral-8x7B-v0.1): 8 experts, top-2 routing (torch._grouped_mm: float32/bf16)."""
    full = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                rms_norm_eps=1e-5, sliding_window=None, num_local_experts=8, num_experts_per_tok=2,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0))
    return _decoder("MixtralForCausalLM", "MixtralConfig", full, size, attn, num_key_value_heads=2,
                    num_local_experts=4)


@register_model(name="bloom_560m", family="bloom", modality="text",
                tags=("decoder", "transformer", "transformers", "alibi"))
def bloom_560m(size, attn):
    """BLOOM-560m (bigscience/bloom-560m): ALiBi position bias added inside ``baddbmm`` (a constant
    operand the graph does not keep), embedding LayerNorm, tied head; one attention path (eager)."""
    full = dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16, layer_norm_epsilon=1e-5,
                bos_token_id=1, eos_token_id=2, pad_token_id=3)
    tiny = dict(vocab_size=TINY_VOCAB, hidden_size=32, n_layer=2, n_head=4, **TINY_SPECIAL)
    return _text("BloomForCausalLM", "BloomConfig", full, tiny, size, attn, no_cache=True)


@register_model(name="phi3_mini_4k", family="phi3", modality="text", tags=("decoder", "transformer", "transformers"),
                attn=HF_ATTN)
def phi3_mini_4k(size, attn):
    """Phi-3-mini-4k-instruct (microsoft/Phi-3-mini-4k-instruct): fused qkv and gate-up projections, 32 heads."""
    full = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                original_max_position_embeddings=4096, rms_norm_eps=1e-5, sliding_window=2047,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    tiny = {k: v for k, v in TINY_DECODER.items() if k != "head_dim"}  # Phi-3 derives head_dim from the width
    return _text("Phi3ForCausalLM", "Phi3Config", full, {**tiny, **TINY_SPECIAL, "num_key_value_heads": 4}, size,
                 attn, no_cache=True)


@register_model(name="qwen3_moe_30b_a3b", family="qwen3-moe", modality="text",
                tags=("decoder", "moe", "transformer", "transformers"), attn=HF_ATTN)
def qwen3_moe_30b_a3b(size, attn):
    """Qwen3-30B-A3B (Qwen/Qwen3-30B-A3B): 128 experts, top-8 routing with renormalised weights, QK-norm."""
    full = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False,
                bos_token_id=151643, eos_token_id=151645, rope_parameters=dict(rope_type="default", rope_theta=1e6))
    return _decoder("Qwen3MoeForCausalLM", "Qwen3MoeConfig", full, size, attn, num_key_value_heads=2,
                    moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)


@register_model(name="gemma2_2b", family="gemma2", modality="text", tags=("decoder", "transformer", "transformers"),
                attn=("eager",))
def gemma2_2b(size, attn):
    """Gemma-2-2B (google/gemma-2-2b): alternating sliding / global layers, logit soft-capping (eager only)."""
    full = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    return _decoder("Gemma2ForCausalLM", "Gemma2Config", full, size, attn, num_key_value_heads=2)
