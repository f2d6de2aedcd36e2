-- NaN for a size.
-- expect: refuse invalid value for max_message_size: must be a whole number
return {config = {max_message_size = 0/0}}
