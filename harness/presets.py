"""The papers' settings, on one page: what every flag of train.py defaults to, per mode, with
the paper and table each value comes from. Constants only; harness/options.py applies them
(apply_defaults) and builds the -h text from them.

    --search darts     SEARCH_PRESETS: "authors" (the default) or "table4" (--preset)
    --search egnas     EGNAS_DEFAULTS
    --train            TRAIN_DEFAULTS (a --genotype), RESNET_DEFAULTS (--model resnet20/56),
                       DATASET_DEFAULTS per dataset (ImageNet16-120, ImageNet)
    --quick            QUICK (search, its retraining, every retraining of an --experiment)
    thesis runs        THESIS_DEFAULTS, QUICK_THESIS (--neurogenesis, --dyno, --equinas)

and the names of the experiments the command line offers (the experiments/ files run them).
"""

# --search darts: two readings of "the paper's setup". "authors": what the BioNAS authors'
# released train_search.py runs (DARTS's setup); "table4": BioNAS App. A.1 Table 4 ("N (Cells)
# 5" is NAS-Bench-201's notation, where N counts cells per stage).
SEARCH_PRESETS = {
    "authors": dict(augment=True, batch_size=64, learning_rate=0.025, learning_rate_min=0.001,
                    nesterov=False, weight_decay=3e-4, epochs=50, init_channels=16, layers=8,
                    nodes=4, report_freq=50),
    "table4": dict(augment=True, batch_size=256, learning_rate=0.1, learning_rate_min=0.0,
                   nesterov=True, weight_decay=3e-4, epochs=50, init_channels=16, layers=5,
                   nodes=4, report_freq=50),
}
SEARCH_DEFAULTS = SEARCH_PRESETS["authors"]
ARCH_LEARNING_RATE = 3e-4            # DARTS's Adam lr of alpha (train_search.py)

# --train of a searched genotype: DARTS's train.py (600 epochs, 36 channels, 20 cells, auxiliary
# head 0.4, cutout 16, drop path 0.2), as BioNAS Sec. 3.4.2 retrains on CIFAR
TRAIN_DEFAULTS = dict(augment=True, batch_size=96, learning_rate=0.025, learning_rate_min=0.0,
                      nesterov=False, weight_decay=3e-4, epochs=600, init_channels=36, layers=20,
                      auxiliary=True, cutout=16, drop_path_prob=0.2, label_smoothing=0.0,
                      lr_schedule="cosine", report_freq=50, holdout=0)
BIONAS_EG_DROP_PATH = 0.3            # BioNAS Sec. 3.4.1: drop path 0.3 for a BioNAS-EG genotype

# DARTS train_imagenet.py / DARTS Sec. A.2: the searched cell transferred to ImageNet
IMAGENET_DEFAULTS = dict(batch_size=128, learning_rate=0.1, weight_decay=3e-5, epochs=250,
                         init_channels=48, layers=14, auxiliary=True, cutout=0,
                         drop_path_prob=0.0, label_smoothing=0.1, lr_schedule="exponential")
DATASET_DEFAULTS = {  # (mode, dataset): overrides (BioNAS Sec. 3.4.2 and App. A.1)
    ("train", "imagenet16-120"): dict(batch_size=1024, learning_rate=0.5, weight_decay=3e-5,
                                      epochs=250, init_channels=48, layers=14, cutout=0,
                                      drop_path_prob=0.0, label_smoothing=0.1,
                                      lr_schedule="linear"),
    ("search", "imagenet16-120"): dict(batch_size=512, learning_rate=0.5),
    ("train", "imagenet"): IMAGENET_DEFAULTS,
}

# ResNet baselines: Sanfiz & Akrout's Biotorch benchmark (BioNAS Sec. 3.4: "the same setup")
RESNET_DEFAULTS = dict(augment=True, batch_size=128, learning_rate=0.1, learning_rate_min=0.0,
                       nesterov=False, weight_decay=1e-4, epochs=250, auxiliary=False, cutout=0,
                       drop_path_prob=0.0, label_smoothing=0.0, lr_schedule="multistep",
                       report_freq=50, holdout=5000)

# --search egnas: EG-NAS's released train_search.py and model_search.py (Cai et al. 2024): SGD
# without Nesterov, partial channels k = 4 with a channel shuffle, no edge normalization, no BN
# after the pools; its alpha part is fed in batches of half the training batch
EGNAS_DEFAULTS = dict(augment=True, batch_size=256, learning_rate=0.1, learning_rate_min=0.0,
                      nesterov=False, weight_decay=3e-4, epochs=50, init_channels=16, layers=8,
                      nodes=4, report_freq=50, warm_start_epochs=15, partial_channels=4,
                      supernet="eg-nas")

QUICK = {  # --quick: search then a short retrain on Fashion-MNIST, minutes on a 2-core CPU
    "search": dict(dataset="fashion-mnist", subset=1600, batch_size=32, learning_rate=0.05,
                   learning_rate_min=0.0, nesterov=True, epochs=3, init_channels=4, layers=3,
                   nodes=2, report_freq=10, warm_start_epochs=1, arch_learning_rate=3e-2,
                   stem_stride=2),
    "train": dict(dataset="fashion-mnist", subset=40000, batch_size=64, learning_rate=0.05,
                  epochs=4, init_channels=16, layers=4, auxiliary=False, cutout=0,
                  drop_path_prob=0.0, augment=False, report_freq=50, stem_stride=2),
    # --experiment --quick: every retraining of the experiment at this size
    "experiment": dict(dataset="fashion-mnist", subset=5000, batch_size=64, learning_rate=0.05,
                       epochs=2, init_channels=8, layers=4, auxiliary=False, cutout=0,
                       drop_path_prob=0.0, augment=False, lr_schedule="cosine", report_freq=40,
                       holdout=0),
}
EGNAS_QUICK_CHANNELS = 8             # --search egnas --quick: 8 / 4 channels per candidate
QUICK_PROCS = 2                      # --quick on the CPU: two data-parallel processes (--procs)

# Maile's thesis: Table 8 / Sec. 6.3.1 (an MLP on MNIST: Adam 3e-4, batch 512), Sec. 7.3 (DYNO)
THESIS_DEFAULTS = {
    "neurogenesis": dict(dataset="fashion-mnist", epochs=20, batch_size=512, learning_rate=3e-4),
    "dyno": dict(dataset="fashion-mnist", batch_size=64, learning_rate=3e-4, iterations=1000),
    "equinas": dict(dataset="fashion-mnist"),
}
QUICK_THESIS = {"neurogenesis": dict(epochs=2, subset=12000), "dyno": dict(iterations=200),
                "equinas": {}}

# ---------------------------------------------------------------- the experiments' names
# BioNAS paper (experiments/bionas_paper.py); the SEEDED ones run every variant once per seed
BIONAS_EXPERIMENTS = ("table1", "mixed-vs-single", "random-rules", "search-vs-random",
                      "robustness", "collapse")
BIONAS_SEEDED = ("mixed-vs-single", "search-vs-random")
# plasticity-rules paper (experiments/plasticity_paper.py)
PLASTICITY_EXPERIMENTS = ("table2", "convergence", "generalization", "robustness", "fig4", "fig6",
                          "a4", "theory")
# thesis: --experiment NAME -> (its module, experiments/thesis_neurogenesis.py,
# thesis_dyno.py or thesis_equinas.py, and the experiment's name there)
THESIS_EXPERIMENTS = {"north-generated": ("neurogenesis", "generated"),
                      "north-pareto": ("neurogenesis", "pareto"),
                      "dyno-transfer": ("neurogenesis", "transfer"),
                      "north-cost": ("neurogenesis", "trigger-cost"),
                      "dyno-phi": ("dyno", "dyno-phi"),
                      "dyno-moving": ("dyno", "dyno-moving"),
                      "equinas-table3": ("equinas", "equinas-table3"),
                      "equinas-table4": ("equinas", "equinas-table4"),
                      "equinas-fig12": ("equinas", "equinas-fig12"),
                      "equinas-cost": ("equinas", "equinas-cost")}
# --seeds when unset: the plasticity paper's five, five for the SEEDED BioNAS experiments
SEEDS = {"plasticity": "0,1,2,3,4", "seeded": "1,2,3,4,5", "other": "1,2,3"}
