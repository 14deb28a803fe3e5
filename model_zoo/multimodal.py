"""Vision-and-text models (transformers): DePlot (Pix2Struct), CLIP, LayoutLMv3, LLaVA-1.5.

Pix2Struct takes ``flattened_patches`` of shape ``(1, patches, 2 + patch_h * patch_w * 3)`` whose first
two columns are the 1-based row and column ids of each patch (DePlot: 256 patches of 16x16 px).
LLaVA's ``input_ids`` are ``[bos] + image tokens (one per visual feature) + text``.
"""
from __future__ import annotations

import torch

from .registry import register_model
from .scaling import TEXT_TOKENS, decoder_ids, floats, hf_model, image, pick, text_ids, token_ids

HF_ATTN = ("eager", "sdpa")
TINY_TOWER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)


def flattened_patches(grid: int, patch_features: int) -> torch.Tensor:
    """Pix2Struct input: ``grid x grid`` patches, columns 0/1 = 1-based row/col ids, then pixel features."""
    axis = torch.arange(1, grid + 1, device="cpu", dtype=torch.get_default_dtype())
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    ids = torch.stack([rows, cols], -1).reshape(1, grid * grid, 2)
    pixels = floats(1, grid * grid, patch_features, kind="patches", requires_grad=False)
    return torch.cat([ids, pixels], -1).requires_grad_()


@register_model(name="deplot", family="pix2struct", modality="vision-text",
                tags=("paper", "encoder-decoder", "transformer", "transformers"), paper_nodes=2863, attn=HF_ATTN)
def deplot(size, attn):
    """DePlot (google/deplot, Pix2Struct-base): 256 flattened 16x16 patches, 4 decoder tokens."""
    full = dict(
        text_config=dict(vocab_size=50244, hidden_size=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                         relative_attention_num_buckets=32, relative_attention_max_distance=128,
                         dense_act_fn="gelu_new", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
                         decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=768, patch_embed_hidden_size=768, d_ff=2048, d_kv=64, num_hidden_layers=12,
                           num_attention_heads=12, dense_act_fn="gelu_new", layer_norm_eps=1e-6, seq_len=4096),
        is_vqa=True, tie_word_embeddings=False)
    tiny = dict(text_config=dict(vocab_size=128, hidden_size=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
                vision_config=dict(hidden_size=32, patch_embed_hidden_size=48, d_ff=64, d_kv=8, num_hidden_layers=2,
                                   num_attention_heads=4, seq_len=64))
    config = pick(size, full, tiny)
    model = hf_model("Pix2StructForConditionalGeneration", "Pix2StructConfig", config, attn, no_cache=True)
    patches = flattened_patches(16 if size == "full" else 4, config["vision_config"]["patch_embed_hidden_size"])
    return model, (), {"flattened_patches": patches,
                       "decoder_input_ids": decoder_ids(config["text_config"]["vocab_size"])}


@register_model(name="clip_vit_b_32", family="clip", modality="vision-text",
                tags=("contrastive", "transformer", "transformers"), attn=HF_ATTN, output="logits_per_image")
def clip_vit_b_32(size, attn):
    """CLIP ViT-B/32 (openai/clip-vit-base-patch32): text and image towers, quick-GELU; output logits_per_image."""
    full = dict(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=512)
    tiny = dict(text_config=dict(TINY_TOWER, vocab_size=128, max_position_embeddings=16, bos_token_id=126,
                                 eos_token_id=127),
                vision_config=dict(TINY_TOWER, image_size=32, patch_size=8), projection_dim=16)
    config = pick(size, full, tiny)
    model = hf_model("CLIPModel", "CLIPConfig", config, attn)
    text = config["text_config"]
    ids = text_ids(size, text["bos_token_id"])  # below the special ids; framed by bos ... eos
    ids[:, 0], ids[:, -1] = text["bos_token_id"], text["eos_token_id"]
    pixels = image(config["vision_config"]["image_size"])
    return model, (), {"input_ids": ids, "pixel_values": pixels}


@register_model(name="layoutlmv3_base", family="layoutlmv3", modality="vision-text",
                tags=("encoder", "document", "transformer", "transformers"), attn=HF_ATTN)
def layoutlmv3_base(size, attn):
    """LayoutLMv3-base (microsoft/layoutlmv3-base): text + 2-D layout + image patches, 1-D/2-D relative biases."""
    full = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                max_2d_position_embeddings=1024, coordinate_size=128, shape_size=128, has_relative_attention_bias=True,
                rel_pos_bins=32, max_rel_pos=128, rel_2d_pos_bins=64, max_rel_2d_pos=256,
                has_spatial_attention_bias=True, text_embed=True, visual_embed=True, input_size=224, patch_size=16,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2)
    # hidden = 4 * coordinate_size + 2 * shape_size (x0, y0, x1, y1, height, width embeddings)
    tiny = dict(TINY_TOWER, vocab_size=128, max_position_embeddings=64, coordinate_size=4, shape_size=8,
                input_size=32, patch_size=8)
    config = pick(size, full, tiny)
    model = hf_model("LayoutLMv3ForSequenceClassification", "LayoutLMv3Config", config, attn)
    ids = text_ids(size, config["vocab_size"])
    corners = token_ids(1001, 4 * ids.shape[1], low=0, kind="boxes").view(1, ids.shape[1], 2, 2)  # (corner, x|y)
    bbox = corners.sort(dim=2).values.reshape(1, ids.shape[1], 4)  # (x0, y0, x1, y1), x0 <= x1, y0 <= y1
    return model, (), {"input_ids": ids, "bbox": bbox, "pixel_values": image(config["input_size"])}


@register_model(name="llava_1_5_7b", family="llava", modality="vision-text",
                tags=("decoder", "transformer", "transformers"), attn=HF_ATTN)
def llava_1_5_7b(size, attn):
    """LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf): CLIP ViT-L/14-336 (layer -2) -> MLP -> Llama-2-7B; 576 image tokens."""
    full = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        text_config=dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=32001),
        image_token_index=32000, image_seq_length=576, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2, tie_word_embeddings=False)
    tiny = dict(vision_config=dict(TINY_TOWER, image_size=28, patch_size=14, projection_dim=16),
                text_config=dict(TINY_TOWER, vocab_size=128, num_attention_heads=4, num_key_value_heads=4,
                                 max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0),
                image_token_index=127, image_seq_length=4)
    config = pick(size, full, tiny)
    model = hf_model("LlavaForConditionalGeneration", "LlavaConfig", config, attn, no_cache=True)
    text = text_ids(size, config["image_token_index"])  # ids below the image token
    image_tokens = torch.full((1, config["image_seq_length"]), config["image_token_index"], dtype=torch.long,
                              device="cpu")
    ids = torch.cat([text[:, :1].fill_(config["text_config"]["bos_token_id"]), image_tokens, text[:, 1:]], 1)
    assert ids.shape[1] == TEXT_TOKENS[size] + config["image_seq_length"]
    return model, (), {"input_ids": ids, "pixel_values": image(config["vision_config"]["image_size"])}
