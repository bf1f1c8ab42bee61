"""The engine core: the model as a graph, the forward pass, the rule registry and context, the backward walk, the
conv geometry and the compiled kernels. Nothing here imports from the layers above (rules, lowering, passes,
recurrent, methods, app); see ARCHITECTURE.md."""
