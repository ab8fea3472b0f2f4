"""Where jobs live between their acceptance and their final outcome."""
