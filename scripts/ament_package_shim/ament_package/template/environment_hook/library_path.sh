# Prepends the prefix's lib directory to the dynamic loader path.
export LD_LIBRARY_PATH="$AMENT_CURRENT_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
