"""AlignProp for FLUX.1 Kontext: reward backpropagation through the sampler into a LoRA."""
