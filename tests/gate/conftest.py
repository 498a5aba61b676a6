import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # user_impls: a user's module on the import path
