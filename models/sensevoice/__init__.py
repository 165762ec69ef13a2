"""SenseVoice-Small (FunASR) in our own PyTorch: frontend, SAN-M encoder, CTC read-out."""
