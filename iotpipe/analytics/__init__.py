"""Analytics: what stored readings mean — rollups, anomalies, trends, quality, health, alerts."""
