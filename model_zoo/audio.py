"""Audio models (transformers): wav2vec2-style CNN + transformer encoders, Whisper, AST, w2v-BERT.

Full-size inputs: 1 s of 16 kHz audio (16000 samples) for waveform models; Whisper's encoder needs
exactly ``2 * max_source_positions`` log-mel frames (3000 at full size); AST takes 1024 frames x 128
mel bins; w2v-BERT 2.0 takes 50 stacked fbank frames (1 s) of 160 features.
"""
from __future__ import annotations

from .registry import register_model
from .scaling import audio, decoder_ids, floats, hf_model, pick

HF_ATTN = ("eager", "sdpa")
TINY_ENCODER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
#: tiny wav2vec2 feature extractor: 2 convolutions instead of 7, small positional convolution (even kernel)
TINY_WAVEFORM = dict(TINY_ENCODER, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                     num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
#: 7 convolutions (total stride 320) over 16000 samples
FULL_FEATURE_EXTRACTOR = dict(conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                              conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=128,
                              num_conv_pos_embedding_groups=16, feat_extract_activation="gelu")


def _waveform(model_class, config_class, full, size, attn):
    model = hf_model(model_class, config_class, pick(size, full, TINY_WAVEFORM), attn)
    return model, (audio(16000 if size == "full" else 400),), {}


@register_model(name="wav2vec2_xls_r_300m", family="wav2vec2", modality="audio",
                tags=("paper", "encoder", "transformer", "transformers"), paper_nodes=2022, attn=HF_ATTN)
def wav2vec2_xls_r_300m(size, attn):
    """Wav2Vec2 XLS-R 300M (facebook/wav2vec2-xls-r-300m) with a CTC head; weight-normed positional convolution."""
    full = dict(FULL_FEATURE_EXTRACTOR, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                intermediate_size=4096, hidden_act="gelu", feat_extract_norm="layer", conv_bias=True,
                do_stable_layer_norm=True, layer_norm_eps=1e-5, vocab_size=32)
    return _waveform("Wav2Vec2ForCTC", "Wav2Vec2Config", full, size, attn)


@register_model(name="hubert_base_ls960", family="hubert", modality="audio",
                tags=("encoder", "transformer", "transformers"), attn=HF_ATTN, output="last_hidden_state")
def hubert_base_ls960(size, attn):
    """HuBERT-base (facebook/hubert-base-ls960): group-normed feature extractor, post-norm encoder."""
    full = dict(FULL_FEATURE_EXTRACTOR, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, hidden_act="gelu", feat_extract_norm="group", conv_bias=False,
                do_stable_layer_norm=False, layer_norm_eps=1e-5)
    return _waveform("HubertModel", "HubertConfig", full, size, attn)


@register_model(name="whisper_small", family="whisper", modality="audio",
                tags=("paper", "encoder-decoder", "transformer", "transformers"), paper_nodes=2729, attn=HF_ATTN)
def whisper_small(size, attn):
    """Whisper-small (openai/whisper-small): 80 mel bins x 3000 frames, 4 decoder tokens."""
    full = dict(vocab_size=51865, num_mel_bins=80, d_model=768, encoder_layers=12, decoder_layers=12,
                encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                max_source_positions=1500, max_target_positions=448, activation_function="gelu",
                scale_embedding=False, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
                decoder_start_token_id=50258, tie_word_embeddings=True)
    tiny = dict(vocab_size=128, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_source_positions=20, max_target_positions=16, pad_token_id=1, bos_token_id=1, eos_token_id=1,
                decoder_start_token_id=2)
    config = pick(size, full, tiny)
    model = hf_model("WhisperForConditionalGeneration", "WhisperConfig", config, attn, no_cache=True)
    features = floats(1, config["num_mel_bins"], 2 * config["max_source_positions"], kind="audio")
    return model, (features,), {"decoder_input_ids": decoder_ids(config["vocab_size"])}


@register_model(name="ast_audioset", family="ast", modality="audio", tags=("encoder", "transformer", "transformers"),
                attn=HF_ATTN)
def ast_audioset(size, attn):
    """Audio Spectrogram Transformer (MIT/ast-finetuned-audioset-10-10-0.4593): overlapping patches, 527 labels."""
    full = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                patch_size=16, frequency_stride=10, time_stride=10, max_length=1024, num_mel_bins=128,
                layer_norm_eps=1e-12, qkv_bias=True, num_labels=527)
    tiny = dict(TINY_ENCODER, max_length=36, num_mel_bins=26, num_labels=10)
    config = pick(size, full, tiny)
    model = hf_model("ASTForAudioClassification", "ASTConfig", config, attn)
    return model, (floats(1, config["max_length"], config["num_mel_bins"], kind="audio"),), {}


@register_model(name="w2v_bert_2_0", family="wav2vec2-bert", modality="audio",
                tags=("encoder", "conformer", "transformer", "transformers"), attn=HF_ATTN, output="last_hidden_state")
def w2v_bert_2_0(size, attn):
    """Wav2Vec2-BERT 2.0 (facebook/w2v-bert-2.0): conformer layers, relative-key position scores, 160 features."""
    full = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                feature_projection_input_dim=160, hidden_act="swish", position_embeddings_type="relative_key",
                left_max_position_embeddings=64, right_max_position_embeddings=8, conv_depthwise_kernel_size=31,
                layer_norm_eps=1e-5, add_adapter=False, vocab_size=None)
    tiny = dict(TINY_ENCODER, feature_projection_input_dim=16, conv_depthwise_kernel_size=5)
    config = pick(size, full, tiny)
    model = hf_model("Wav2Vec2BertModel", "Wav2Vec2BertConfig", config, attn)
    frames = 50 if size == "full" else 16
    return model, (floats(1, frames, config["feature_projection_input_dim"], kind="audio"),), {}
