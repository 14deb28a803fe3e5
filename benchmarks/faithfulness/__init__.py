"""Faithfulness benchmark: are dynlrp's explanations right, not only conservative?

    python -m benchmarks.faithfulness            # full run (~15 min on one CPU thread), seeded
    python -m benchmarks.faithfulness --quick    # 16 images / 64 sequences per model
    python -m benchmarks.faithfulness --no-lxt --models cnn,vit

Writes ``benchmarks/output/faithfulness/`` (git-ignored): ``results.md`` (also printed), ``curves.png``,
``heatmaps_<model>.png``, ``tokens_<model>.png``, ``weights/`` (cached trained models; retrained when
absent or when their spec changes, ``--retrain`` forces it), ``lxt_*`` (LXT's jobs, results and log).

Models (trained here on the CPU from seeded random initialisations; no download): a VGG-style CNN and a
torchvision ViT (patch 4, 4 layers, hidden 64) on scikit-learn's bundled digits (1797 images, 8x8
upsampled bilinearly to 32x32, pixel values in [0, 1], 3 channels, stratified 70/30 split, seed 0), and
BERT- and Llama-style sequence classifiers (transformers configs, 2 layers, hidden 32) on the
planted-token task (:mod:`.data`), one and two planted tokens each.

Protocol, images (identical for every method; :mod:`.metrics` has the formulas):

* explained: the first ``samples`` (default 256) test images, for the class the model predicts;
* relevance of a patch: sum of the signed pixel relevance over the channels and the 4x4 pixels of the
  patch (64 patches = ViT's tokens); ranking most relevant first, ties in seeded random order;
* baseline: the image blurred with a Gaussian (sigma 4 px, radius 12 px, reflect padding), per channel;
* perturbation: patches replaced by the same patches of the blurred image, most relevant first (MoRF) or
  least relevant first (LeRF), in 16 steps of 4 patches (17 points from the intact to the fully blurred
  image); tracked: the target logit (and its softmax probability);
* ABPC = AUC(LeRF) - AUC(MoRF), trapezoid over the fraction removed in [0, 1], logits not normalised
  (the models' logits, same for every method of one model); also on the probability;
* comprehensiveness / sufficiency (ERASER): mean over removing / keeping the top 1, 5, 10, 20, 50% of
  patches (1, 3, 6, 13, 32 patches) of p(x) - p(perturbed), on the target probability;
* reported: mean over the samples (ABPC also with its standard error).

Protocol, text: the first ``text_samples`` (default 500) test sequences; relevance of a token = the
relevance of its input embedding (``inputs_embeds``, a detached leaf) summed over the hidden dimension;
top-k accuracy = the k most relevant content tokens (``[CLS]`` / ``[EOS]`` excluded, ties random) contain
min(k, n_planted) planted tokens.

Methods (:mod:`.methods`): dynlrp presets; zennit 0.5.1 composites with the same settings (CNN); Captum's
LRP with its default rules (failures recorded with their reason); LXT 2.1 in its own environment
(``.tox/lxt``, transformers 4.57.6; :mod:`.lxt_part`); gradient, input x gradient, integrated gradients,
random.
"""
