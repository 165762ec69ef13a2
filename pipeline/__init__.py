"""Pipeline stages (asyncio) and the messages between them. No torch at module level."""
