"""HF peft's LoRA on Conv2d ("LoRA (peft)"), the kernel-wise baseline LoRA-C is compared against.

It lives with peft's other conv tuners in ``petl.methods.peft_tuners`` (one shared injection path); this module
keeps the names other code imports from here.

peft factorises each conv as lora_B(lora_A(x)) with lora_A = Conv2d(Cin, r, k) and lora_B = Conv2d(r, Cout, 1):
r * (Cin*k*k + Cout) parameters per conv, versus LoRA-C's r*k*k*(Cin + Cout). ResNet-50, the 52 default convs:
per unit of rank LoRA-C has 109,440 parameters and peft 79,232, so the matched peft rank for LoRA-C rank
1 / 2 / 4 / 8 / 16 is 1 / 3 / 6 / 11 / 22 (``matched_peft_rank``).
"""

from .peft_tuners import (LORA_C_PARAMS_PER_RANK_RESNET50, PEFT_PARAMS_PER_RANK_RESNET50, PeftLoraOptions,
                          matched_peft_rank, peft_lora, peft_parameters)

__all__ = ["LORA_C_PARAMS_PER_RANK_RESNET50", "PEFT_PARAMS_PER_RANK_RESNET50", "PeftLoraOptions",
           "matched_peft_rank", "peft_lora", "peft_parameters"]
