"""`fedclinic site check`: the verdict (`check`), its terminal view (`view`), shareable values (`shapes`)."""
