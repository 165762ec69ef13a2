"""Model code: Whisper recognizer, weight loaders, mel front end, VAD model. No asyncio."""
