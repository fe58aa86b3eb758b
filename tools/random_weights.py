"""Save the state dict of a freshly initialised net: python tools/random_weights.py NET CLASSES OUT.pth
(for checks that need weights of the right shape, not a trained model)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import MODELS, build_model  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in MODELS or not sys.argv[2].isdigit():
        sys.exit(f"usage: python tools/random_weights.py {{{','.join(MODELS)}}} CLASSES OUT.pth")
    torch.save(build_model(sys.argv[1], int(sys.argv[2])).state_dict(), sys.argv[3])
