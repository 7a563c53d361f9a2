"""Built-in methods. Importing this package registers each of them (one module per method)."""

from importlib import import_module

# Each module registers itself with @register_method. A module listed here that fails to import is an error,
# never a silent fallback (a prior implementation's ImportError fallback turned "LoRA-C" into bias tuning).
BUILTIN_MODULES = ("baselines", "lora_c", "peft_tuners", "conv_adapter", "gpaf", "metalr", "ssf", "partial_ft")

for _name in BUILTIN_MODULES:
    import_module(f"{__name__}.{_name}")
