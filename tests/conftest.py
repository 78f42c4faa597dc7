import os
import sys

# Tests import the package from the source tree (the extension is built in place).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
