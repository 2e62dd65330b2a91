"""DynamoDB access, one repository per entity. Botocore errors stop here."""
