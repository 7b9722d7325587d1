"""Training loops (online single-task, offline policy extraction), evaluation and run logging."""
