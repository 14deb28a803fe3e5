"""Vision models: torchvision and timm CNNs / ViTs, transformers vision encoders, DETR and SegFormer.

torchvision entries build the published architecture at ``full`` size with the library's own model
function and, at ``tiny`` size, the same model class with fewer / narrower blocks (every block kind
of the full model kept). Images are 224x224 at full size (SigLIP2: 384).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .registry import meta_parameters, register_model
from .scaling import hf_model, image, pick, tv_class

HF_ATTN = ("eager", "sdpa")
TINY_CLASSES = 10


def _torchvision_full(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


@register_model(name="vgg16", family="vgg", modality="vision", tags=("paper", "cnn", "torchvision"), paper_nodes=90)
def vgg16(size, attn):
    """VGG16 (torchvision): 13 convolutions, 5 max pools, 3 dense layers."""
    if size == "full":
        return _torchvision_full("vgg16"), (image(224),), {}
    features = tv_class("vgg", "make_layers")([8, "M", 16, "M"])
    with meta_parameters():  # VGG always creates a 512*7*7 -> 4096 -> 4096 classifier (120M parameters) ...
        model = tv_class("vgg", "VGG")(features, num_classes=TINY_CLASSES)
    # ... which the tiny model replaces by the same layout with small widths, initialised as VGG does
    model.classifier = nn.Sequential(
        nn.Linear(16 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, TINY_CLASSES),
    )
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.zeros_(layer.bias)
    return model, (image(28),), {}  # 28 / 2 / 2 = 7: the adaptive pool sees 7x7, as at 224


@register_model(name="resnet50", family="resnet", modality="vision", tags=("paper", "cnn", "torchvision"),
                paper_nodes=339)
def resnet50(size, attn):
    """ResNet-50 (torchvision): bottleneck blocks [3, 4, 6, 3], batch norm."""
    if size == "full":
        return _torchvision_full("resnet50"), (image(224),), {}
    model = tv_class("resnet", "ResNet")(tv_class("resnet", "Bottleneck"), [1, 1, 1, 1], num_classes=TINY_CLASSES,
                                        width_per_group=8)
    return model, (image(32),), {}


@register_model(name="vit_b_16", family="vit", modality="vision", tags=("paper", "transformer", "torchvision"),
                paper_nodes=779)
def vit_b_16(size, attn):
    """ViT-B/16 (torchvision, nn.MultiheadAttention)."""
    if size == "full":
        return _torchvision_full("vit_b_16"), (image(224),), {}
    model = tv_class("vision_transformer", "VisionTransformer")(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=TINY_CLASSES)
    return model, (image(32),), {}


def _efficientnet_v2_tiny() -> nn.Module:
    fused, mb = tv_class("efficientnet", "FusedMBConvConfig"), tv_class("efficientnet", "MBConvConfig")
    setting = [fused(1, 3, 1, 8, 8, 2), fused(4, 3, 2, 8, 16, 1), mb(4, 3, 2, 16, 24, 2)]
    return tv_class("efficientnet", "EfficientNet")(
        setting, dropout=0.3, num_classes=TINY_CLASSES, norm_layer=partial(nn.BatchNorm2d, eps=1e-3), last_channel=64)


@register_model(name="efficientnet_v2_m", family="efficientnet", modality="vision",
                tags=("paper", "cnn", "torchvision"), paper_nodes=1526)
def efficientnet_v2_m(size, attn):
    """EfficientNetV2-M (torchvision): fused and depthwise MBConv blocks, squeeze-excitation, SiLU."""
    if size == "full":
        return _torchvision_full("efficientnet_v2_m"), (image(224),), {}
    return _efficientnet_v2_tiny(), (image(32),), {}


@register_model(name="mobilenet_v3_large", family="mobilenet", modality="vision", tags=("cnn", "torchvision"))
def mobilenet_v3_large(size, attn):
    """MobileNetV3-Large (torchvision): hard-swish, hard-sigmoid squeeze-excitation."""
    if size == "full":
        return _torchvision_full("mobilenet_v3_large"), (image(224),), {}
    bneck = partial(tv_class("mobilenetv3", "InvertedResidualConfig"), width_mult=1.0)
    setting = [
        bneck(16, 3, 16, 16, False, "RE", 1, 1), bneck(16, 3, 32, 24, False, "RE", 2, 1),
        bneck(24, 5, 48, 24, True, "RE", 1, 1), bneck(24, 3, 48, 32, False, "HS", 2, 1),
        bneck(32, 3, 64, 32, True, "HS", 1, 1),
    ]
    model = tv_class("mobilenetv3", "MobileNetV3")(setting, last_channel=64, num_classes=TINY_CLASSES)
    return model, (image(32),), {}


@register_model(name="densenet121", family="densenet", modality="vision", tags=("cnn", "torchvision"))
def densenet121(size, attn):
    """DenseNet-121 (torchvision): dense blocks (concatenation), transitions with average pooling."""
    if size == "full":
        return _torchvision_full("densenet121"), (image(224),), {}
    model = tv_class("densenet", "DenseNet")(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                                            num_classes=TINY_CLASSES)
    return model, (image(32),), {}


@register_model(name="regnet_y_400mf", family="regnet", modality="vision", tags=("cnn", "torchvision"))
def regnet_y_400mf(size, attn):
    """RegNetY-400MF (torchvision): grouped bottlenecks with squeeze-excitation."""
    if size == "full":
        return _torchvision_full("regnet_y_400mf"), (image(224),), {}
    params = tv_class("regnet", "BlockParams").from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8,
                                                               se_ratio=0.25)
    return tv_class("regnet", "RegNet")(params, num_classes=TINY_CLASSES, stem_width=8), (image(32),), {}


@register_model(name="efficientnet_b0", family="efficientnet", modality="vision", tags=("cnn", "timm"))
def efficientnet_b0(size, attn):
    """EfficientNet-B0 (timm): depthwise-separable and inverted-residual blocks, SE, SiLU."""
    from timm.models.efficientnet import _gen_efficientnet  # the variant generator with width/depth multipliers

    if size == "full":
        return _gen_efficientnet("efficientnet_b0", pretrained=False), (image(224),), {}
    model = _gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.5, pretrained=False,
                              num_classes=TINY_CLASSES)
    return model, (image(32),), {}


# ---------------------------------------------------------------------------------------------- transformers


def _hf_vision(model_class, config_class, full, tiny, size, attn, side_full=224, side_tiny=32):
    model = hf_model(model_class, config_class, pick(size, full, tiny), attn)
    return model, (image(side_full if size == "full" else side_tiny),), {}


TINY_VIT = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)


@register_model(name="siglip2_so400m_p14_384", family="siglip", modality="vision",
                tags=("paper", "transformer", "transformers"), paper_nodes=2178, attn=HF_ATTN, output="pooler_output")
def siglip2_so400m_p14_384(size, attn):
    """SigLIP2 So400m/14 at 384 px, vision tower with its attention-pooling head (google/siglip2-so400m-patch14-384)."""
    full = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                vision_use_head=True)
    tiny = dict(TINY_VIT, image_size=28, patch_size=7)
    return _hf_vision("SiglipVisionModel", "SiglipVisionConfig", full, tiny, size, attn, 384, 28)


@register_model(name="swin_tiny_patch4_window7_224", family="swin", modality="vision",
                tags=("transformer", "transformers"), attn=HF_ATTN)
def swin_tiny(size, attn):
    """Swin-T (microsoft/swin-tiny-patch4-window7-224): shifted windows, relative position bias, patch merging."""
    full = dict(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                window_size=7, mlp_ratio=4.0, num_labels=1000)
    # 32 / 4 = 8x8 tokens, windows of 4: stage 1 shifts its windows (roll + mask), stage 2 (4x4) does not,
    # like the full model's last stage (7x7 tokens, window 7).
    tiny = dict(image_size=32, embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, num_labels=TINY_CLASSES)
    return _hf_vision("SwinForImageClassification", "SwinConfig", full, tiny, size, attn)


_CONVNEXT_FULL = dict(num_stages=4, depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], num_labels=1000,
                      image_size=224)
_CONVNEXT_TINY = dict(num_stages=2, depths=[1, 1], hidden_sizes=[8, 16], num_labels=TINY_CLASSES, image_size=32)


@register_model(name="convnext_tiny_224", family="convnext", modality="vision", tags=("cnn", "transformers"))
def convnext_tiny(size, attn):
    """ConvNeXt-T (facebook/convnext-tiny-224): depthwise 7x7 convolutions, layer norm, layer scale."""
    return _hf_vision("ConvNextForImageClassification", "ConvNextConfig", _CONVNEXT_FULL, _CONVNEXT_TINY, size, None)


@register_model(name="convnextv2_tiny_1k_224", family="convnext", modality="vision", tags=("cnn", "transformers"))
def convnextv2_tiny(size, attn):
    """ConvNeXt-V2-T (facebook/convnextv2-tiny-1k-224): ConvNeXt with global response normalisation."""
    return _hf_vision("ConvNextV2ForImageClassification", "ConvNextV2Config", _CONVNEXT_FULL, _CONVNEXT_TINY, size,
                      None)


@register_model(name="deit_base_distilled_patch16_224", family="deit", modality="vision",
                tags=("transformer", "transformers"), attn=HF_ATTN)
def deit_base_distilled(size, attn):
    """DeiT-B distilled (facebook/deit-base-distilled-patch16-224): class and distillation tokens, two heads."""
    full = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                image_size=224, patch_size=16, num_labels=1000)
    tiny = dict(TINY_VIT, image_size=32, patch_size=8, num_labels=TINY_CLASSES)
    return _hf_vision("DeiTForImageClassificationWithTeacher", "DeiTConfig", full, tiny, size, attn)


@register_model(name="dinov2_small", family="dinov2", modality="vision", tags=("transformer", "transformers"),
                attn=HF_ATTN, output="pooler_output")
def dinov2_small(size, attn):
    """DINOv2-S/14 (facebook/dinov2-small): layer scale; 518-px position grid interpolated (bicubic) to the input."""
    full = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                image_size=518, layerscale_value=1.0, use_swiglu_ffn=False)
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56)
    return _hf_vision("Dinov2Model", "Dinov2Config", full, tiny, size, attn, 224, 28)


@register_model(name="beit_base_patch16_224", family="beit", modality="vision", tags=("transformer", "transformers"),
                attn=HF_ATTN)
def beit_base(size, attn):
    """BEiT-B/16 (microsoft/beit-base-patch16-224): relative position bias per layer, layer scale, mean pooling."""
    full = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                image_size=224, patch_size=16, use_relative_position_bias=True, use_absolute_position_embeddings=False,
                use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=1000)
    tiny = dict(TINY_VIT, image_size=32, patch_size=8, num_labels=TINY_CLASSES)
    return _hf_vision("BeitForImageClassification", "BeitConfig", full, tiny, size, attn)


@register_model(name="detr_resnet50", family="detr", modality="vision",
                tags=("transformer", "transformers", "detection", "timm"), attn=HF_ATTN)
def detr_resnet50(size, attn):
    """DETR (facebook/detr-resnet-50): timm ResNet-50 backbone (random, frozen BN, stem/layer1 frozen), 6+6 layers."""
    full = dict(backbone="resnet50", d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_queries=100, num_labels=91)
    tiny = dict(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5,
                num_labels=TINY_CLASSES)
    model = hf_model("DetrForObjectDetection", "DetrConfig", pick(size, full, tiny), attn)
    pixels = image(224 if size == "full" else 64)
    mask = torch.ones(1, *pixels.shape[-2:], dtype=torch.long, device="cpu")
    return model, (pixels,), {"pixel_mask": mask}


@register_model(name="segformer_b0_ade_512", family="segformer", modality="vision",
                tags=("transformer", "transformers", "segmentation"), attn=HF_ATTN)
def segformer_b0(size, attn):
    """SegFormer-B0 (nvidia/segformer-b0-finetuned-ade-512-512): efficient attention with spatial reduction."""
    full = dict(num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
                patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256, num_labels=150)
    tiny = dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
                strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
                num_labels=TINY_CLASSES)
    return _hf_vision("SegformerForSemanticSegmentation", "SegformerConfig", full, tiny, size, attn)
