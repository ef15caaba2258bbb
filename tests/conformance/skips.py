"""Every ONNX backend case tuili does not run, with the reason. One list, reviewed by hand."""
SKIPS: dict[str, str] = {
}
