"""Sources: where raw messages come from (files, simulator, MQTT, ThingSpeak); none touch the store."""
